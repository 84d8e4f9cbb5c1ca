"""Benchmark entry point: reaper against the alternatives, side by side, in one run.

    python bench/run.py [--quick] [--only startup,rss,idle,teardown,orphans,signal,api]
                        [--reaper CMD] [--json PATH] [--runs N] ...

It installs nothing: contestants that are missing (tini, dumb-init, catatonit,
GNU timeout, psutil) are skipped with a note.  It prints a markdown table and
the targets, and writes everything to JSON (bench/results.json by default).
Run it with the Python that runs reaper (e.g. /opt/reaper-venv/bin/python):
the `python -c pass` floors use reaper's interpreter.

Two processes, so that clean-up cannot be skipped:
- the *keeper* (this process as started) creates the bench's cgroup subtree
  `<own cgroup>/reaper-bench.<uuid>` and a temporary directory, starts the
  driver inside `<subtree>/driver`, and on any exit -- success, error, Ctrl-C,
  SIGTERM, even the driver being SIGKILLed -- kills the whole subtree with
  cgroup.kill, removes it, and removes the temporary directory.  It never
  touches a cgroup outside that subtree.
- the *driver* (`--_driver`, internal) runs the metrics (bench/metrics.py).  It
  is a child subreaper, so orphans that escape a contestant come to it (and are
  counted and reaped) rather than burdening the machine's init.
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import benchlib as bl  # noqa: E402

METRIC_ORDER = ("startup", "idle", "teardown", "orphans", "signal", "api")
METRIC_ORDER += ("registry", "kill", "ls")      # named jobs: bench/jobs.py

FULL = {"startup_runs": 60, "startup_warmup": 3, "idle_window": 10.0, "idle_settle": 1.0,
        "sizes": [100, 1000, 10000], "big_n": 5000, "big_reps": 1, "teardown_reps": 3, "grace": 1.0, "cap_extra": 2.0, "settle": 0.5,
        "build_timeout": 60.0, "orphans": 5000, "orphans_batch": 25, "orphans_reps": 5,
        "orphans_sample_in_timing": False, "zombie_sample_ms": 5, "orphans_timeout": 120.0,
        "signal_runs": 1000, "signal_warmup": 20, "api_runs": 200, "api_warmup": 10}
QUICK = dict(FULL, sizes=[100, 1000], startup_runs=10, startup_warmup=1, idle_window=3.0, idle_settle=0.5,
             teardown_reps=1, grace=0.5, cap_extra=1.0, settle=0.3, orphans_reps=1,
             orphans_sample_in_timing=True, signal_runs=200, signal_warmup=10, api_runs=40,
             api_warmup=3)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller, faster run (< 2 minutes)")
    p.add_argument("--only", default="", help="comma-separated: startup, rss, idle, teardown, "
                   "orphans, signal, api (rss and idle are one phase)")
    p.add_argument("--reaper", default="", help="command that runs reaper (default: the `reaper` "
                   "next to this Python, else `python -m reaper`)")
    p.add_argument("--json", default=os.path.join(HERE, "results.json"), help="where to write JSON")
    p.add_argument("--runs", type=int, help="rounds for start-up and signal latency")
    p.add_argument("--sizes", help="teardown tree sizes, e.g. 100,1000,10000 (max 10000; sizes "
                   "above 5000 run reaper and the cgroup.kill floor only)")
    p.add_argument("--reps", type=int, help="repetitions of teardown and orphan trials")
    p.add_argument("--grace", type=float, help="grace period in seconds for teardown")
    p.add_argument("--idle-window", type=float, help="idle measurement window in seconds")
    p.add_argument("--orphans", type=int, help="number of short-lived orphans")
    p.add_argument("--_driver", nargs=2, metavar=("SUBTREE", "TMP"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = []
    if args.only:
        from metrics import ALIASES
        for word in args.only.split(","):
            word = word.strip()
            if word not in ALIASES:
                p.error(f"--only: unknown metric {word!r}")
            names.append(ALIASES[word])
    args.metrics = [m for m in METRIC_ORDER if not names or m in names]
    cfg = dict(QUICK if args.quick else FULL)
    if args.runs:
        cfg["startup_runs"] = cfg["signal_runs"] = cfg["api_runs"] = max(1, args.runs)
        cfg["startup_warmup"] = min(cfg["startup_warmup"], 1)
        cfg["signal_warmup"] = min(cfg["signal_warmup"], 2)
    if args.sizes:
        cfg["sizes"] = [int(x) for x in args.sizes.split(",")]
        if not all(2 <= n <= 10000 for n in cfg["sizes"]):
            p.error("--sizes: each size must be between 2 and 10000")
    if args.reps:
        cfg["teardown_reps"] = cfg["orphans_reps"] = cfg["big_reps"] = max(1, args.reps)
    if args.grace is not None:
        cfg["grace"] = max(0.05, args.grace)
    if args.idle_window is not None:
        cfg["idle_window"] = max(0.5, args.idle_window)
    if args.orphans is not None:
        cfg["orphans"] = min(20000, max(1, args.orphans))
    cfg["quick"] = args.quick
    args.cfg = cfg
    return args


# -- keeper -------------------------------------------------------------------------

class Interrupted(Exception):
    pass


def keeper(argv):
    try:
        parent = bl.own_cgroup_dir()
    except bl.BenchError as e:
        sys.stderr.write(f"bench: needs a writable cgroup v2: {e}\n")
        return 2
    root = os.path.join(parent, f"reaper-bench.{uuid.uuid4().hex[:12]}")
    tmp = tempfile.mkdtemp(prefix="reaper-bench.")
    proc = None

    def on_signal(signum, frame):
        raise Interrupted()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    rc = 1
    try:
        os.mkdir(root)
        bl.cg_enable_pids(root)     # trials get pids.max where cgroup v2 has pids
        os.mkdir(os.path.join(root, "driver"))
        join = os.path.join(root, "driver")
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--_driver", root, tmp]
                                + argv, preexec_fn=lambda: bl.cg_join(join))
        rc = proc.wait()
        if rc < 0:
            sys.stderr.write(f"bench: the driver died of signal {-rc}\n")
            rc = 128 - rc
    except (KeyboardInterrupt, Interrupted):
        rc = 130
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)    # the driver turns it into KeyboardInterrupt
            try:
                proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, KeyboardInterrupt, Interrupted):
                pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        clean = bl.cg_destroy(root, timeout_s=20)
        if proc is not None and proc.poll() is None:
            proc.wait()     # it was in the subtree: cgroup.kill has killed it
        shutil.rmtree(tmp, ignore_errors=True)
        if not clean:
            sys.stderr.write(f"bench: WARNING: could not remove {root}\n")
    return rc


# -- driver -------------------------------------------------------------------------

def machine(python, tools, cgroot):
    info = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
            "kernel": f"{platform.system()} {platform.release()} {platform.version()}",
            "arch": platform.machine(), "cpus": os.cpu_count(), "python_executable": python,
            "tools": tools}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_mib"] = int(f.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    info["os"] = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    try:
        with open("/proc/loadavg") as f:
            info["loadavg_at_start"] = f.read().split()[:3]
    except OSError:
        pass
    v1 = False
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if " - cgroup " in line:
                v1 = True
    info["cgroup"] = {"bench_subtree": cgroot, "layout": "hybrid (v1 + v2)" if v1 else "unified v2",
                      "cgroup_kill": bl.has_cgroup_kill(cgroot),
                      "pids_max_per_trial": _pids_enabled(cgroot)}
    return info


def _pids_enabled(cgroot):
    try:
        with open(os.path.join(cgroot, "cgroup.subtree_control")) as f:
            return "pids" in f.read().split()
    except OSError:
        return False


def driver(args):
    import launchers as L
    import metrics as M
    import report
    root, tmp = args._driver
    started = time.monotonic()
    bl.become_subreaper()
    reaper_cmd = L.parse_reaper(args.reaper, sys.executable)
    python = L.interpreter_of(reaper_cmd, sys.executable)
    contestants, skipped = L.build(reaper_cmd, python)
    check = subprocess.run(reaper_cmd + ["--version"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if check.returncode != 0:
        sys.stderr.write(f"bench: reaper does not run as {shlex.join(reaper_cmd)}: "
                         f"{check.stdout.decode(errors='replace').strip()}\n")
        return 2
    bench = M.Bench(root, tmp, args.cfg, contestants, python, reaper_cmd)
    for key, why in skipped.items():
        bench.note(f"{key} skipped: {why}")
    bench.say(f"reaper: {shlex.join(reaper_cmd)}; python: {python}; metrics: {', '.join(args.metrics)}")
    doc = {"bench_version": 1,
           "machine": machine(python, L.versions(python, reaper_cmd), root),
           "config": dict(args.cfg, reaper=reaper_cmd, metrics=args.metrics,
                          pycache="private PYTHONPYCACHEPREFIX, warmed before timing"),
           "contestants": {lc.key: {"label": lc.label, "argv_prefix": lc.prefix(args.cfg["grace"]),
                                    "subreaper": lc.subreaper} for lc in contestants},
           "skipped": skipped}
    try:
        doc["metrics"] = M.run_selected(bench, args.metrics)
    finally:
        os.close(bench.log_fd)
    try:
        with open("/proc/loadavg") as f:
            doc["machine"]["loadavg_at_end"] = f.read().split()[:3]
    except OSError:
        pass
    doc["targets"] = report.targets(doc)
    doc["notes"] = bench.notes
    doc["elapsed_s"] = round(time.monotonic() - started, 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    sys.stdout.write(report.markdown(doc))
    sys.stdout.flush()
    bench.say(f"done in {doc['elapsed_s']} s; JSON written to {args.json}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args._driver:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            return driver(args)
        except KeyboardInterrupt:
            return 130
        except bl.BenchError as e:
            sys.stderr.write(f"bench: {e}\n")
            return 2
    return keeper(argv)


if __name__ == "__main__":
    sys.exit(main())
