"""Metrics for named jobs (issue 10): registry cost, `reaper kill`, `reaper ls`.

- `registry`: `reaper exec -- true` with the registry on and off
  (REAPER_NO_REGISTRY=1), interleaved in one run, posix_spawn to waitpid, as
  the start-up metric does.  Target: the difference is within the noise
  (median ratio <= 1.05).
- `kill`: a 1,000-process tree (forktree.py, every process honours TERM)
  under `reaper exec --name`, stopped by `reaper kill NAME` started from the
  bench; time from spawning `reaper kill` until the job's cgroup is empty
  (POLLPRI on its cgroup.events; the cgroup vanishing counts as empty) and
  until `reaper kill` returns.  Floor, interleaved: the same tree killed with
  a write to cgroup.kill.  Target: until-empty <= 1.3x the floor.  The same
  with `--signal KILL` shows what the TERM ladder itself costs.
- `ls`: 100 live jobs (`reaper exec --name` of `sleep`), then `reaper ls` and
  `reaper ls --json` timed, interleaved with `python -c pass`.  Target: < 100 ms.

Each job lives in its own trial cgroup of the bench's subtree (metrics.Trial),
and each run uses a private registry (REAPER_REGISTRY under the bench's
temporary directory), so other jobs on the machine are neither seen nor
touched.
"""

import os
import signal
import subprocess
import time

import benchlib as bl
from benchlib import median, ratio

HERE = os.path.dirname(os.path.abspath(__file__))
FORKTREE = os.path.join(HERE, "forktree.py")

DEFAULTS = {"registry_runs": 40, "kill_size": 1000, "kill_reps": 3, "ls_jobs": 100, "ls_runs": 20}
QUICK = {"registry_runs": 10, "kill_size": 300, "kill_reps": 1, "ls_jobs": 20, "ls_runs": 5}


def _cfg(bench, key):
    cfg = QUICK if bench.cfg.get("quick") else DEFAULTS
    return bench.cfg.get(key, cfg[key])


def _env(bench, **extra):
    registry = os.path.join(bench.tmp, "registry")
    os.makedirs(registry, mode=0o700, exist_ok=True)
    env = dict(bench.env, REAPER_REGISTRY=registry)
    env.pop("REAPER_NO_REGISTRY", None)
    env.update(extra)
    return env


def _spawn_time(argv, env, cpu=None):
    """Wall ms of one run; its CPU ms (user + system, itself and what it reaped) appended to `cpu`."""
    devnull = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
               (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)]
    t0 = time.perf_counter_ns()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=devnull, setsid=True)
    _, status, ru = os.wait4(pid, 0)
    wall = (time.perf_counter_ns() - t0) / 1e6
    if cpu is not None:
        cpu.append((ru.ru_utime + ru.ru_stime) * 1000)
    return wall, status


def _stats(samples):
    from metrics import summary
    return summary(samples)


# -- registry cost on start-up ---------------------------------------------------

def registry(bench):
    runs = _cfg(bench, "registry_runs")
    argv = bench.reaper_cmd + ["exec", "--", bench.true]
    variants = [("registry-on", _env(bench)), ("registry-off", _env(bench, REAPER_NO_REGISTRY="1")),
                ("python", None)]
    times = {k: [] for k, _ in variants}
    cpu = {k: [] for k, _ in variants}
    for r in range(runs + 2):
        order = variants[r % 3:] + variants[:r % 3]
        for key, env in order:
            cmd = [bench.python, "-c", "pass"] if env is None else argv
            sink = []
            ms, status = _spawn_time(cmd, env or bench.env, sink)
            if status != 0:
                bench.note(f"registry: {key} exited with status {status}")
                continue
            if r >= 2:
                times[key].append(ms)
                cpu[key] += sink
    res = {"unit": "ms", "rounds": runs, "commands": {k: _stats(v) for k, v in times.items()},
           "cpu_ms": {k: _stats(v) for k, v in cpu.items()}}
    on, off = median(times["registry-on"]), median(times["registry-off"])
    res["x_off"] = ratio(on, off)
    res["delta_ms"] = None if on is None or off is None else on - off
    con, coff = median(cpu["registry-on"]), median(cpu["registry-off"])
    res["cpu_x_off"] = ratio(con, coff)
    res["cpu_delta_ms"] = None if con is None or coff is None else con - coff
    return res


# -- reaper kill on a big tree -----------------------------------------------------

def _job_cgroup(trial_cg):
    for d in os.listdir(trial_cg):
        if d.startswith("reaper.") and os.path.isdir(os.path.join(trial_cg, d)):
            return os.path.join(trial_cg, d)
    return None


def _kill_trial(bench, key, n, rep):
    from metrics import Trial
    env = _env(bench)
    tree = [bench.python, FORKTREE, str(n)]
    name = f"bench-{key}-{rep}"
    argv = tree if key == "cgroup-kill" else bench.reaper_cmd + ["exec", "--name", name, "--grace", "5s",
                                                                 "--"] + tree
    saved, bench.env = bench.env, env
    try:
        trial = Trial(bench, f"kill{n}-{key}", argv)
    finally:
        bench.env = saved
    result = {}
    try:
        if trial.lines.wait_for("ready", bench.cfg.get("build_timeout", 60)) is None:
            result["error"] = f"job never ready; {bench.log_tail()}"
            return result
        target = trial.cg if key == "cgroup-kill" else _job_cgroup(trial.cg)
        if target is None:
            result["error"] = "no job cgroup (is reaper in cgroup containment?)"
            return result
        result["processes"] = len(bl.cg_pids(target))
        watch = bl.Events(target)
        killer = None
        try:
            t0 = time.monotonic()
            if key == "cgroup-kill":
                bl.cg_kill(target)
            elif key == "supervisor-term":
                os.kill(trial.pid, signal.SIGTERM)      # our own child: the ladder without `reaper kill`
            else:
                extra = ["--signal", "KILL"] if key == "reaper-kill-sigkill" else []
                killer = subprocess.Popen(bench.reaper_cmd + ["kill", name, *extra], env=env,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=bench.log_fd)
            deadline = t0 + 30
            while watch.populated() and time.monotonic() < deadline:
                watch.poller.poll(max(1, (deadline - time.monotonic()) * 1000))
            empty = time.monotonic()
            result["empty_ms"] = (empty - t0) * 1000 if not watch.populated() else None
            if killer is not None:
                rc = killer.wait(timeout=30)
                result["returned_ms"] = (time.monotonic() - t0) * 1000
                result["kill_status"] = rc
                if rc != 0:
                    result["error"] = f"reaper kill exited {rc}; {bench.log_tail()}"
        finally:
            watch.close()
        return result
    finally:
        trial.finish()


def kill(bench):
    n, reps = _cfg(bench, "kill_size"), _cfg(bench, "kill_reps")
    keys = ["cgroup-kill", "supervisor-term", "reaper-kill", "reaper-kill-sigkill"]
    raw = {k: [] for k in keys}
    for rep in range(reps):
        for key in keys[rep % 4:] + keys[:rep % 4]:
            r = _kill_trial(bench, key, n, rep)
            raw[key].append(r)
            bench.say(f"kill N={n} rep {rep + 1}: {key}: " + (
                f"{r['empty_ms']:.0f} ms" if r.get("empty_ms") is not None else r.get("error", "?")))
    floor = median([t.get("empty_ms") for t in raw["cgroup-kill"]])
    res = {"n": n, "reps": reps, "floor_ms": floor, "contestants": {}}
    for key in keys:
        trials = raw[key]
        empty = median([t.get("empty_ms") for t in trials])
        res["contestants"][key] = {
            "trials": trials, "empty_ms": empty, "x_floor": ratio(empty, floor),
            "returned_ms": median([t.get("returned_ms") for t in trials]),
            "errors": [t["error"] for t in trials if "error" in t]}
    return res


# -- reaper ls with many jobs -------------------------------------------------------

def ls(bench):
    from metrics import Trial
    count, runs = _cfg(bench, "ls_jobs"), _cfg(bench, "ls_runs")
    env = _env(bench)
    trials = []
    res = {"jobs": count, "rounds": runs}
    saved, bench.env = bench.env, env
    try:
        for i in range(count):
            trials.append(Trial(bench, f"ls-{i}", bench.reaper_cmd + [
                "exec", "--name", f"ls-{i:03d}", "--", bench.sh, "-c", f"echo ready; exec {bench.sleep} 100000"]))
        bench.env = saved
        for t in trials:
            if t.lines.wait_for("ready", 60) is None:
                res["error"] = f"a job never started; {bench.log_tail()}"
                return res
        # The job prints `ready` as soon as it runs; its supervisor registers it
        # right after.  Wait (bounded) until `ls` lists every one of them.
        import json
        listed = 0
        for _ in range(100):
            out = subprocess.run(bench.reaper_cmd + ["ls", "--json"], env=env, stdout=subprocess.PIPE,
                                 stderr=bench.log_fd, stdin=subprocess.DEVNULL, timeout=60).stdout
            listed = len(json.loads(out or b"[]"))
            if listed >= count:
                break
        res["listed"] = listed
        times = {"ls": [], "ls-json": [], "python": []}
        cmds = {"ls": bench.reaper_cmd + ["ls"], "ls-json": bench.reaper_cmd + ["ls", "--json"],
                "python": [bench.python, "-c", "pass"]}
        keys = list(cmds)
        for r in range(runs + 1):
            for key in keys[r % 3:] + keys[:r % 3]:
                ms, status = _spawn_time(cmds[key], env)
                if status != 0:
                    bench.note(f"ls: {key} exited with status {status}")
                elif r:
                    times[key].append(ms)
        res["commands"] = {k: _stats(v) for k, v in times.items()}
        return res
    finally:
        bench.env = saved
        for t in trials:
            t.finish()


METRICS = {"registry": registry, "kill": kill, "ls": ls}


# -- report -------------------------------------------------------------------------

def targets(m, add):
    reg = m.get("registry")
    if reg:
        x = reg.get("x_off")
        c = reg["commands"]
        cpu = reg.get("cpu_ms", {})
        add("registry", "reaper exec -- true: registry on <= 1.05x off (wall)", "reaper-cgroup",
            None if x is None else f"{x:.3f}x", None if x is None else x <= 1.05,
            "" if x is None else f"{c['registry-on']['median']:.1f} ms vs {c['registry-off']['median']:.1f} ms")
        cx = reg.get("cpu_x_off")
        add("registry", "reaper exec -- true: registry on <= 1.05x off (CPU user+sys)", "reaper-cgroup",
            None if cx is None else f"{cx:.3f}x", None if cx is None else cx <= 1.05,
            "" if cx is None else f"{cpu['registry-on']['median']:.1f} ms vs {cpu['registry-off']['median']:.1f} ms")
    k = m.get("kill")
    if k:
        sup = k["contestants"].get("supervisor-term", {}).get("empty_ms")
        for key in ("reaper-kill", "reaper-kill-sigkill"):
            c = k["contestants"][key]
            x = c["x_floor"]
            if key == "reaper-kill" and sup is not None and c["empty_ms"] is not None:
                add("kill", "`reaper kill` vs TERM sent to the supervisor directly (the same ladder)", key,
                    f"{c['empty_ms'] / sup:.2f}x", None,
                    f"{c['empty_ms']:.0f} ms vs {sup:.0f} ms: what the command and its channel add")
            add("kill", f"`reaper kill` N={k['n']} until empty <= 1.3x cgroup.kill floor"
                + (" (--signal KILL)" if key.endswith("sigkill") else " (TERM ladder)"), key,
                None if x is None else f"{x:.2f}x", None if x is None else x <= 1.3,
                "" if x is None else f"{c['empty_ms']:.0f} ms vs floor {k['floor_ms']:.0f} ms; "
                f"returns after {c['returned_ms']:.0f} ms")
    lsm = m.get("ls")
    if lsm and "commands" in lsm:
        for key in ("ls", "ls-json"):
            med = lsm["commands"][key]["median"]
            add("ls", f"`reaper {key.replace('-', ' --')}` with {lsm['jobs']} live jobs < 100 ms", key,
                None if med is None else f"{med:.0f} ms", None if med is None else med < 100,
                f"listed {lsm.get('listed')}; python -c pass {lsm['commands']['python']['median']:.0f} ms")


def markdown(m):
    lines = []
    reg, k, lsm = m.get("registry"), m.get("kill"), m.get("ls")
    if not (reg or k or lsm):
        return lines
    lines += ["", "Named jobs:", "", "| measurement | median | ratio |", "|---|---|---|"]
    if reg:
        c = reg["commands"]
        lines.append(f"| `reaper exec -- true`, registry on / off | {c['registry-on']['median']:.1f} / "
                     f"{c['registry-off']['median']:.1f} ms | {reg['x_off']:.3f}× |")
        cpu = reg.get("cpu_ms")
        if cpu:
            lines.append(f"| the same, CPU user+system | {cpu['registry-on']['median']:.1f} / "
                         f"{cpu['registry-off']['median']:.1f} ms | {reg['cpu_x_off']:.3f}× |")
    if k:
        lines.append(f"| cgroup.kill floor, N={k['n']} | {k['floor_ms']:.0f} ms | 1 |")
        for key in ("supervisor-term", "reaper-kill", "reaper-kill-sigkill"):
            c = k["contestants"][key]
            if c["empty_ms"] is not None and key == "supervisor-term":
                lines.append(f"| SIGTERM to the supervisor (same ladder, no command) until empty | "
                             f"{c['empty_ms']:.0f} ms | {c['x_floor']:.2f}× |")
            elif c["empty_ms"] is not None:
                lines.append(f"| `{key.replace('-sigkill', ' --signal KILL').replace('-', ' ')}` until empty "
                             f"(returns) | {c['empty_ms']:.0f} ({c['returned_ms']:.0f}) ms | "
                             f"{c['x_floor']:.2f}× |")
    if lsm and "commands" in lsm:
        c = lsm["commands"]
        lines.append(f"| `reaper ls` / `ls --json`, {lsm['jobs']} jobs | {c['ls']['median']:.0f} / "
                     f"{c['ls-json']['median']:.0f} ms | python -c pass {c['python']['median']:.0f} ms |")
    return lines
