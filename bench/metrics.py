"""The six measurements, each returning plain dicts for the JSON.

Design rules, shared by all of them:
- Interleaved: every round runs each contestant once, in an order rotated per
  round (A B C, B C A, ...), so drift of the machine (thermal, cache, other
  tenants) hits everyone alike.  Results are medians over rounds, compared as
  ratios to a floor measured in the same run, never as lone absolute times.
- Kernel's view: each trial runs in its own cgroup below the bench's subtree
  (benchlib), so "how many processes are left" is read from cgroup.procs, not
  from anybody's bookkeeping.
- Events, not sleeps: readiness is a line from the job, exit is a pidfd,
  emptiness is POLLPRI on cgroup.events; every wait has a deadline.  The only
  timed waits are the measurement windows themselves (idle) and caps.
- Concurrency where it cannot distort: idle, RSS and signal latency run all
  supervisors side by side (they are asleep), which also interleaves them
  perfectly; start-up, teardown and orphans run one at a time.
"""

import os
import select
import signal
import subprocess
import sys
import time

import benchlib as bl
from benchlib import median, quartiles, ratio

HERE = os.path.dirname(os.path.abspath(__file__))
FORKTREE = os.path.join(HERE, "forktree.py")
ORPHANS = os.path.join(HERE, "orphans.py")
SIGJOB = os.path.join(HERE, "sigjob.py")


class Trial:
    """One process started inside its own fresh cgroup of the bench subtree."""

    def __init__(self, bench, label, argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                 pids_max=None):
        self.bench = bench
        self.cg = bench.new_cgroup(label)
        cg = self.cg
        if pids_max is not None:
            bl.cg_limit_pids(cg, pids_max)
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=bench.log_fd,
                                     env=bench.env, start_new_session=True,
                                     preexec_fn=lambda: bl.cg_join(cg))
        bench.live.add(self.proc.pid)
        self.pid = self.proc.pid
        self.pidfd = os.pidfd_open(self.pid)
        self.lines = bl.Lines(self.proc.stdout.fileno()) if self.proc.stdout else None

    def exited(self):
        return bool(select.select([self.pidfd], [], [], 0)[0])

    def finish(self):
        """Kill whatever is left (cgroup.kill), remove the cgroup, reap."""
        ok = bl.cg_destroy(self.cg)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            ok = False
        self.bench.live.discard(self.pid)
        os.close(self.pidfd)
        for stream in (self.proc.stdout, self.proc.stdin):
            if stream:
                stream.close()
        bl.reap_strays(self.bench.live)
        if not ok:
            self.bench.note(f"could not fully clean up trial cgroup {self.cg}")


class Bench:
    """What every metric needs: config, environment, contestants, cgroups, notes."""

    def __init__(self, root, tmp, cfg, launchers, python, reaper_cmd):
        self.root = root
        self.reaper_cmd = reaper_cmd
        self.tmp = tmp
        self.cfg = cfg
        self.launchers = launchers
        self.python = python
        self.counter = 0
        self.live = set()
        self.notes = []
        self.log_path = os.path.join(tmp, "stderr.log")
        self.log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        env = dict(os.environ)
        # The bench's own, private byte-code cache: a fresh checkout (or an
        # environment with PYTHONDONTWRITEBYTECODE) would otherwise make every
        # Python contestant recompile its modules on every start.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
        # The bench kills supervisors on purpose: their registry entries go to a
        # registry of the run's own, removed with it, never to /run/reaper.
        env["REAPER_REGISTRY"] = os.path.join(tmp, "registry")
        self.env = env
        self.true = _which("true")
        self.sleep = _which("sleep")
        self.sh = _which("sh")

    def note(self, text):
        if text not in self.notes:
            self.notes.append(text)
        self.say(f"note: {text}")

    def say(self, text):
        os.write(2, f"bench: {text}\n".encode(errors="replace"))

    def new_cgroup(self, label):
        self.counter += 1
        path = os.path.join(self.root, f"t{self.counter:04d}-{label}"[:120])
        os.mkdir(path)
        return path

    def log_tail(self, n=5):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 2000))
                lines = f.read().decode(errors="replace").strip().splitlines()
            return " | ".join(lines[-n:])
        except OSError:
            return ""

    def supervised(self):
        return [lc for lc in self.launchers if lc.supervisor]


def _which(name):
    import shutil
    path = shutil.which(name)
    if path is None:
        raise bl.BenchError(f"{name} not found on PATH")
    return path


def rotate(items, r):
    k = r % len(items) if items else 0
    return items[k:] + items[:k]


def summary(samples, scale=1.0):
    med = median(samples)
    q1, q3 = quartiles(samples)
    return {"median": None if med is None else med * scale,
            "q1": None if q1 is None else q1 * scale,
            "q3": None if q3 is None else q3 * scale,
            "n": len([s for s in samples if s is not None])}


# -- 1. start-up ------------------------------------------------------------------

def startup(bench):
    """Wall time of `<launcher> true` (posix_spawn to waitpid), interleaved rounds."""
    py = bench.python
    cmds = [("bare", "true (bare)", [bench.true]),
            ("python-I-S", "python -I -S -c pass", [py, "-I", "-S", "-c", "pass"]),
            ("python", "python -c pass", [py, "-c", "pass"])]
    for lc in bench.supervised():
        cmds.append((lc.key, f"{lc.label} true", lc.argv([bench.true], bench.cfg["grace"])))
    # Diagnostic, no target: interpreter + reaper's entry point without `exec`,
    # which splits reaper's start-up into "getting to main()" and "exec itself".
    cmds.append(("reaper-version", "reaper --version", bench.reaper_cmd + ["--version"]))
    usable = []
    for key, label, argv in cmds:
        # One checked run first: it validates the command and fills the byte-code cache.
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, env=bench.env, start_new_session=True,
                           timeout=60)
        if r.returncode != 0:
            bench.note(f"start-up: {label} failed with status {r.returncode}: "
                       f"{r.stderr.decode(errors='replace').strip()[-300:]}")
            continue
        usable.append((key, label, argv))
    devnull = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
               (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)]
    times = {key: [] for key, _, _ in usable}
    warmup, rounds = bench.cfg["startup_warmup"], bench.cfg["startup_runs"]
    failures = {}
    for r in range(warmup + rounds):
        for key, label, argv in rotate(usable, r):
            t0 = time.perf_counter_ns()
            pid = os.posix_spawn(argv[0], argv, bench.env, file_actions=devnull, setsid=True)
            _, status = os.waitpid(pid, 0)
            t1 = time.perf_counter_ns()
            if status != 0:
                failures[key] = failures.get(key, 0) + 1
                continue
            if r >= warmup:
                times[key].append((t1 - t0) / 1e6)
    for key, n in failures.items():
        bench.note(f"start-up: {key} failed {n} time(s) during timing")
    res = {"unit": "ms", "rounds": rounds, "warmup": warmup, "commands": {}}
    base = median(times.get("bare", []))
    pyfloor = median(times.get("python", []))
    isfloor = median(times.get("python-I-S", []))
    for key, label, argv in usable:
        s = summary(times[key])
        s.update(label=label, argv=argv,
                 overhead_ms=None if s["median"] is None or base is None else s["median"] - base,
                 x_python=ratio(s["median"], pyfloor), x_python_I_S=ratio(s["median"], isfloor))
        res["commands"][key] = s
    return res


# -- 2 + 3. peak RSS and idle cost ---------------------------------------------------------

IDLE_PY = "import os, _signal; os.write(1, b'ready\\n'); _signal.pause()"


def idle(bench):
    """All supervisors side by side, each supervising `sleep`; RSS and idle wake-ups."""
    py = bench.python
    job = [bench.sh, "-c", f"echo ready; exec {bench.sleep} 100000"]
    members = [(lc.key, lc.label, lc.argv(job, bench.cfg["grace"])) for lc in bench.supervised()]
    members += [("python-I-S", "idle python -I -S", [py, "-I", "-S", "-c", IDLE_PY]),
                ("python", "idle python", [py, "-c", IDLE_PY])]
    trials = {}
    res = {"window_s": bench.cfg["idle_window"], "settle_s": bench.cfg["idle_settle"], "members": {}}
    try:
        for key, label, argv in members:
            trials[key] = Trial(bench, f"idle-{key}", argv)
        for key, label, argv in members:
            if trials[key].lines.wait_for("ready", 60) is None:
                bench.note(f"idle: {label} never reported ready; {bench.log_tail()}")
        alive = {k: t for k, t in trials.items() if not t.exited()}
        # A short settle window is discarded: it absorbs what each supervisor
        # still does right after starting its child.
        time.sleep(bench.cfg["idle_settle"])
        before = {k: (bl.cpu_ns(t.pid), _switches(t.pid)) for k, t in alive.items()}
        t0 = time.monotonic()
        time.sleep(bench.cfg["idle_window"])
        window = time.monotonic() - t0
        for key, label, argv in members:
            t = trials[key]
            entry = {"label": label, "argv": argv, "pid_alive": key in alive and not t.exited()}
            if entry["pid_alive"]:
                c0, s0 = before[key]
                c1, s1 = bl.cpu_ns(t.pid), _switches(t.pid)
                st = bl.status_fields(t.pid, ("VmHWM", "VmRSS")) or {}
                entry.update(cpu_us_per_s=(c1 - c0) / 1e3 / window,
                             wakeups_per_s=(s1 - s0) / window, wakeups=s1 - s0,
                             vmhwm_kib=st.get("VmHWM"), vmrss_kib=st.get("VmRSS"))
            res["members"][key] = entry
    finally:
        for t in trials.values():
            t.finish()
    floor = res["members"].get("python-I-S", {}).get("vmhwm_kib")
    for entry in res["members"].values():
        entry["rss_x_python_I_S"] = ratio(entry.get("vmhwm_kib"), floor)
    return res


def _switches(pid):
    st = bl.status_fields(pid, ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
    if st is None:
        return None
    return st["voluntary_ctxt_switches"] + st["nonvoluntary_ctxt_switches"]


# -- 4. teardown ------------------------------------------------------------------

def teardown(bench):
    """Stop request -> nothing of the job left, for N-process trees that try to escape."""
    cfg = bench.cfg
    grace, cap, settle = cfg["grace"], cfg["grace"] + cfg["cap_extra"], cfg["settle"]
    everyone = [(lc.key, lc) for lc in bench.launchers] + [("cgroup-kill", None)]
    # Above big_n only reaper (both containments) and the floor run: the others
    # leave half the tree behind at any size, and each 10,000-process trial
    # costs seconds to build.
    big = {"reaper-cgroup", "reaper-pgroup", "cgroup-kill"}
    cast = {n: [(k, lc) for k, lc in everyone if n <= cfg["big_n"] or k in big] for n in cfg["sizes"]}
    # Bigger trees need longer to build and to tear down: the cap grows by 1 s
    # per 1,000 processes (it only bounds a failure; medians come from success).
    # 10,000 dying processes took 4.7 s of the kernel's time under cgroup.kill
    # on a loaded 2-CPU machine.
    caps = {n: cap + n / 1000 for n in cfg["sizes"]}
    scenarios = []
    for n in cfg["sizes"]:
        for variant in ("honour", "ignore"):
            scenarios.append((n, variant))
    raw = {f"{n}-{v}": {key: [] for key, _ in cast[n]} for n, v in scenarios}
    for rep in range(cfg["teardown_reps"]):
        for n, variant in scenarios:
            if n > cfg["big_n"] and rep >= cfg["big_reps"]:
                continue        # a 10,000-process trial takes seconds to build
            job = [bench.python, FORKTREE, str(n)]
            if variant == "ignore":
                job += ["--ignore-every", "10", "--main-ignores-term"]
            for key, lc in rotate(cast[n], rep):
                argv = job if lc is None else lc.argv(job, grace)
                r = _teardown_trial(bench, key, lc, argv, n, caps[n], settle)
                raw[f"{n}-{variant}"][key].append(r)
                bench.say(f"teardown N={n} {variant} rep {rep + 1}: {key}: " + (
                    f"{r['empty_ms']:.0f} ms" if r.get("empty_ms") is not None
                    else f"{r.get('survivors')} left" if "survivors" in r else r.get("error", "?")))
    res = {"grace_s": grace, "cap_s": cap, "settle_s": settle, "reps": cfg["teardown_reps"],
           "scenarios": {}}
    # The floor does not depend on the variant (cgroup.kill ignores dispositions),
    # so both variants' floor trials at one N are pooled into one, steadier median.
    floors = {n: median([t.get("empty_ms") for v in ("honour", "ignore")
                         for t in raw[f"{n}-{v}"]["cgroup-kill"]]) for n in cfg["sizes"]}
    for n, variant in scenarios:
        sc = raw[f"{n}-{variant}"]
        floor = floors[n]
        out = {"n": n, "variant": variant, "floor_ms": floor, "cap_s": caps[n],
               "reps": len(sc["cgroup-kill"]),
               "floor_ms_this_variant": median([t.get("empty_ms") for t in sc["cgroup-kill"]]),
               "contestants": {}}
        for key, lc in cast[n]:
            trials = sc[key]
            errors = [t["error"] for t in trials if "error" in t]
            done = [t.get("empty_ms") for t in trials]
            all_done = bool(trials) and not errors and all(d is not None for d in done)
            med = median(done) if all_done else None
            entry = {
                "label": "cgroup.kill (floor)" if lc is None else lc.label,
                "trials": trials,
                "all_empty": all_done,
                "empty_ms": med,
                "x_floor": ratio(med, floor),
                "beyond_grace_x_floor": ratio(None if med is None else med - grace * 1000, floor)
                if variant == "ignore" and lc is not None else None,
                "errors": errors,
                "survivors_max": None if errors or not trials else max(t["survivors"] for t in trials),
                "launcher_exit_ms": median([t.get("launcher_exit_ms") for t in trials]),
            }
            out["contestants"][key] = entry
        res["scenarios"][f"{n}-{variant}"] = out
    return res


def _teardown_trial(bench, key, lc, argv, n, cap, settle):
    # pids.max: the tree, the launcher, reaper's pidns init and some slack.
    trial = Trial(bench, f"td{n}-{key}", argv, pids_max=n + 64)
    result = {}
    try:
        line = trial.lines.wait_for("ready", max(bench.cfg["build_timeout"], n / 50))
        if line is None:
            result["error"] = f"job never ready; {bench.log_tail()}"
            return result
        main_pid = int(line.split()[1])
        result["processes_before"] = len(bl.cg_pids(trial.cg))
        if result["processes_before"] < n:
            result["error"] = f"only {result['processes_before']} of {n} processes in the trial cgroup"
            return result
        ev = bl.Events(trial.cg)
        try:
            poller = select.poll()
            poller.register(ev.fd, select.POLLPRI)
            poller.register(trial.pidfd, select.POLLIN)
            t0 = time.monotonic()
            if lc is None:
                bl.cg_kill(trial.cg)                     # the kernel floor
            elif not lc.supervisor:
                os.kill(main_pid, signal.SIGTERM)        # bare: the job itself is asked
            else:
                os.kill(trial.pid, signal.SIGTERM)       # the supervisor is asked
            t_exit = None
            while True:
                now = time.monotonic()
                if t_exit is None and trial.exited():
                    t_exit = now - t0
                    poller.unregister(trial.pidfd)
                if not ev.populated():
                    result["empty_ms"] = (time.monotonic() - t0) * 1000
                    break
                deadline = t0 + cap
                if t_exit is not None:
                    deadline = min(deadline, t0 + t_exit + settle)
                if now >= deadline:
                    break
                poller.poll(max(1, (deadline - now) * 1000))
            if t_exit is None and trial.exited():
                t_exit = time.monotonic() - t0
        finally:
            ev.close()
        left = bl.cg_pids(trial.cg)
        if lc is not None and lc.supervisor:
            left = [p for p in left if p != trial.pid]
        result["survivors"] = len(left)
        result["launcher_exit_ms"] = None if t_exit is None else t_exit * 1000
        result["launcher_hung"] = t_exit is None and lc is not None and lc.supervisor
        return result
    finally:
        trial.finish()


# -- 5. short-lived orphans ----------------------------------------------------------

def orphans(bench):
    """Wall time of a job that makes COUNT orphans, relative to bare; peak zombies held.

    Orphans that a contestant does not adopt (bare, and any launcher that is not
    a subreaper) come to the bench, which is a subreaper itself.  The bench then
    plays the part of init on a normal machine and reaps them as they arrive
    (woken by SIGCHLD), so `bare` is a fair floor: letting thousands of zombies
    pile up under the bench would slow the job down and flatter everyone else.
    How many orphans each contestant let go of is reported as "orphans lost".
    """
    cfg = bench.cfg
    count = cfg["orphans"]
    job = [bench.python, ORPHANS, str(count), "--batch", str(cfg["orphans_batch"])]
    contestants = bench.launchers
    walls = {lc.key: [] for lc in contestants}
    escaped = {lc.key: [] for lc in contestants}
    peaks = {lc.key: [] for lc in contestants}
    sample_all = cfg["orphans_sample_in_timing"]
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_handler = signal.signal(signal.SIGCHLD, lambda s, f: None)
    old_fd = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    try:
        for rep in range(cfg["orphans_reps"]):
            for lc in rotate(contestants, rep):
                r = _orphans_trial(bench, lc, lc.argv(job, cfg["grace"]), wake_r, sample=sample_all)
                walls[lc.key].append(r.get("wall_ms"))
                escaped[lc.key].append(r.get("escaped"))
                if sample_all:
                    peaks[lc.key].append(r.get("peak_zombies"))
                bench.say(f"orphans rep {rep + 1}: {lc.key}: " + (
                    f"{r['wall_ms']:.0f} ms" if r.get("wall_ms") else r.get("error", "?")))
        if not sample_all:
            # Sampling costs CPU on a small machine, so zombies get a pass of their own.
            for lc in contestants:
                if lc.supervisor:
                    r = _orphans_trial(bench, lc, lc.argv(job, cfg["grace"]), wake_r, sample=True)
                    peaks[lc.key].append(r.get("peak_zombies"))
    finally:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGCHLD, old_handler)
        os.close(wake_r)
        os.close(wake_w)
    base = median(walls.get("bare", []))
    res = {"count": count, "batch": cfg["orphans_batch"], "reps": cfg["orphans_reps"],
           "sample_interval_ms": cfg["zombie_sample_ms"],
           "contestants": {}}
    for lc in contestants:
        med = median(walls[lc.key])
        res["contestants"][lc.key] = {
            "label": lc.label, "wall": summary(walls[lc.key]), "x_bare": ratio(med, base),
            "peak_zombies": max([p for p in peaks[lc.key] if p is not None], default=None)
            if lc.supervisor else None,
            "escaped_orphans": median(escaped[lc.key]),
            "subreaper": lc.subreaper}
    return res


def _reap_adopted(bench):
    """Reap exited children of the bench that it did not start; return how many."""
    n = 0
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return n
        if info is None or info.si_pid in bench.live:
            return n        # nothing, or the contestant itself: the trial is ending
        try:
            os.waitpid(info.si_pid, 0)
            n += 1
        except ChildProcessError:
            pass


def _orphans_trial(bench, lc, argv, wake_r, sample):
    t0 = time.monotonic()
    trial = Trial(bench, f"orph-{lc.key}", argv)
    result = {}
    adopted = 0
    try:
        peak = 0
        interval = bench.cfg["zombie_sample_ms"] / 1000
        deadline = t0 + bench.cfg["orphans_timeout"]
        poller = select.poll()
        poller.register(trial.pidfd, select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                result["error"] = "timed out"
                return result
            events = dict(poller.poll((min(left, interval) if sample else left) * 1000))
            if wake_r in events:
                try:
                    while os.read(wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                adopted += _reap_adopted(bench)
            if trial.pidfd in events:
                break
            if sample and lc.supervisor:
                peak = max(peak, _zombies_of(trial.pid))
        result["wall_ms"] = (time.monotonic() - t0) * 1000
        if sample and lc.supervisor:
            result["peak_zombies"] = peak
        if trial.lines.wait_for("done", 5) is None:
            result["error"] = f"job did not finish; {bench.log_tail()}"
            result["wall_ms"] = None
        trial.proc.wait()
        bench.live.discard(trial.pid)
        # Those reaped during the trial plus those still to come all escaped.
        result["escaped"] = adopted + bl.reap_strays(bench.live)
        return result
    finally:
        trial.finish()


def _zombies_of(pid):
    return sum(1 for c in bl.children_of(pid) if bl.proc_state(c) == "Z")


# -- 6. signal forwarding latency ---------------------------------------------------

def signals(bench):
    """SIGUSR1 to the launcher until the job's handler has run, all side by side."""
    cfg = bench.cfg
    job = [bench.python, "-I", "-S", SIGJOB]
    members = [lc for lc in bench.launchers if lc.forwards_usr1]
    for lc in bench.launchers:
        if not lc.forwards_usr1:
            bench.note(f"signal latency: {lc.label} skipped: {lc.note}")
    trials, targets, lat = {}, {}, {lc.key: [] for lc in members}
    lost = {lc.key: 0 for lc in members}
    try:
        for lc in members:
            trials[lc.key] = Trial(bench, f"sig-{lc.key}", lc.argv(job, cfg["grace"]))
        for lc in members:
            line = trials[lc.key].lines.wait_for("ready", 60)
            if line is None:
                bench.note(f"signal latency: {lc.label} never ready; {bench.log_tail()}")
                continue
            targets[lc.key] = int(line.split()[1]) if not lc.supervisor else trials[lc.key].pid
        active = [lc for lc in members if lc.key in targets]
        warm = cfg["signal_warmup"]
        for r in range(warm + cfg["signal_runs"]):
            for lc in rotate(active, r):
                t = trials[lc.key]
                t0 = time.perf_counter_ns()
                os.kill(targets[lc.key], signal.SIGUSR1)
                got = _read_byte(t.proc.stdout.fileno(), 2.0)
                t1 = time.perf_counter_ns()
                if not got:
                    lost[lc.key] += 1
                    continue
                if r >= warm:
                    lat[lc.key].append((t1 - t0) / 1e3)
    finally:
        for t in trials.values():
            t.finish()
    tini = median(lat.get("tini", []))
    bare = median(lat.get("bare", []))
    res = {"unit": "us", "rounds": cfg["signal_runs"], "contestants": {}}
    for lc in members:
        s = summary(lat[lc.key])
        s.update(label=lc.label, lost=lost[lc.key], x_tini=ratio(s["median"], tini),
                 x_direct=ratio(s["median"], bare))
        res["contestants"][lc.key] = s
    return res


def _read_byte(fd, timeout_s):
    p = select.poll()
    p.register(fd, select.POLLIN)
    if not p.poll(timeout_s * 1000):
        return False
    return bool(os.read(fd, 1))


from apibench import api  # noqa: E402  -- the Python API's own metric module

METRICS = {"startup": startup, "idle": idle, "teardown": teardown, "orphans": orphans,
           "signal": signals, "api": api}
# --only accepts these names; rss and idle share one phase.
ALIASES = {"rss": "idle", "idle": "idle", "startup": "startup", "teardown": "teardown",
           "orphans": "orphans", "signal": "signal", "signals": "signal", "api": "api"}


# Named jobs (issue 10): bench/jobs.py
import jobs  # noqa: E402
METRICS.update(jobs.METRICS)
ALIASES.update({name: name for name in jobs.METRICS})


def warm(bench):
    """Run every contestant once, so each Python one finds its byte-code cached."""
    argvs = [[bench.python, "-c", "pass"], [bench.python, "-c", "import signal, subprocess"]]
    argvs += [lc.argv([bench.true], bench.cfg["grace"]) for lc in bench.supervised()]
    for argv in argvs:
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=bench.env, start_new_session=True, timeout=60)


def run_selected(bench, names):
    warm(bench)
    results = {}
    for name in names:
        bench.say(f"--- {name}")
        t0 = time.monotonic()
        results[name] = METRICS[name](bench)
        results[name]["elapsed_s"] = round(time.monotonic() - t0, 1)
    return results


if __name__ == "__main__":
    sys.exit("metrics.py is a module; run bench/run.py")
