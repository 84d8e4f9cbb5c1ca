"""Metric `api`: `reaper.run(["true"])` against `subprocess.run(["true"])`, side by side.

Both run in the driver process, interleaved round by round (A B C, B C A, ...),
so drift hits them alike; the result is the ratio of medians.  reaper is the
package of this checkout (its directory goes first on sys.path), the same code
the test suite runs.

The first reaper.run() of a process starts the API's fork server (a Python
interpreter start); it is timed once on its own (`first_call_ms`) and excluded
from the rounds, since every later call reuses the server.  Each reaper.run()
hands the job to the server's spare supervisor (forked ahead of the request),
which claims the job's name in the registry, makes the job's cgroup, starts
`true` (clone3 CLONE_VM|CLONE_VFORK into the cgroup), reaps it, reads the
cgroup's counters, removes the cgroup and the registry entry, reports over the
channel and exits; `phases` splits a call into "until the job runs" (Job())
and "until it is collected" (wait()), and `fork_floor` is a bare fork + exit +
waitpid of the driver (a Python process of similar size) for scale.

`cpu_ms`: CPU time per call of everything involved (caller, fork server,
supervisors, job), from the usage_usec of the driver's own cgroup (cpu.stat,
hierarchical), summed over the command's calls and divided by their number.
Wall time on this shared machine follows the load; CPU time much less, so both
are reported.

Variants: `reaper-run` (default: a cgroup where writable, accounting on) and
`reaper-run-pgroup` (containment="pgroup", which the API pairs with a pid
namespace so that the job still dies with its supervisor); two diagnostics
without a target take costs away one by one: `reaper-run-nostats`
(stats=False: no --stats-json file) and `reaper-run-minimal` (no accounting,
no registry entry, no cgroup, no pid namespace: the fork server, the
supervisor's fork, its signal set-up, the job's fork + exec, and the channel).
"""

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

from benchlib import median, quartiles, ratio  # noqa: E402

TARGET_X = 3.0


def _summary(samples):
    q1, q3 = quartiles(samples)
    return {"median": median(samples), "q1": q1, "q3": q3, "n": len(samples)}


def api(bench):
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import reaper
    true = bench.true
    devnull = subprocess.DEVNULL
    rounds = bench.cfg.get("api_runs", 100)
    warmup = bench.cfg.get("api_warmup", 5)

    t0 = time.perf_counter_ns()
    first = reaper.run([true], stdin=devnull, stdout=devnull)
    first_ms = (time.perf_counter_ns() - t0) / 1e6
    if first.returncode != 0:
        bench.note(f"api: reaper.run(['true']) returned {first.returncode}")

    bare_env = dict(os.environ, REAPER_NO_REGISTRY="1")

    def fork_exit():
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)

    cmds = [("subprocess", "subprocess.run(['true'])",
             lambda: subprocess.run([true], stdin=devnull, stdout=devnull)),
            ("reaper-run", "reaper.run(['true'])",
             lambda: reaper.run([true], stdin=devnull, stdout=devnull)),
            ("reaper-run-pgroup", "reaper.run(['true'], containment='pgroup')",
             lambda: reaper.run([true], stdin=devnull, stdout=devnull, containment="pgroup")),
            ("reaper-run-nostats", "reaper.run(['true'], stats=False)",
             lambda: reaper.run([true], stdin=devnull, stdout=devnull, stats=False)),
            ("reaper-run-minimal", "reaper.run(['true'], stats=False, containment='pgroup', "
             "pidns=False), REAPER_NO_REGISTRY=1",
             lambda: reaper.run([true], stdin=devnull, stdout=devnull, stats=False, env=bare_env,
                                containment="pgroup", pidns=False)),
            ("fork-floor", "os.fork() + _exit + waitpid (driver)", fork_exit)]
    times = {key: [] for key, _, _ in cmds}
    cpu = {key: 0 for key, _, _ in cmds}
    usage = _cgroup_usage()
    phases = {"start": [], "collect": []}
    for r in range(warmup + rounds):
        k = r % len(cmds)
        for key, _, fn in cmds[k:] + cmds[:k]:
            u0 = usage()
            t0 = time.perf_counter_ns()
            fn()
            t1 = time.perf_counter_ns()
            if r >= warmup:
                times[key].append((t1 - t0) / 1e6)
                cpu[key] += usage() - u0
        t0 = time.perf_counter_ns()
        job = reaper.Job([true], stdin=devnull, stdout=devnull)
        t1 = time.perf_counter_ns()
        job.wait()
        t2 = time.perf_counter_ns()
        if r >= warmup:
            phases["start"].append((t1 - t0) / 1e6)
            phases["collect"].append((t2 - t1) / 1e6)
    base = median(times["subprocess"])
    res = {"unit": "ms", "rounds": rounds, "warmup": warmup, "first_call_ms": round(first_ms, 2),
           "commands": {}, "phases": {k: _summary(v) for k, v in phases.items()}}
    for key, label, _ in cmds:
        s = _summary(times[key])
        s.update(label=label, x_subprocess=ratio(s["median"], base))
        if cpu["subprocess"] > 0:
            s.update(cpu_ms=round(cpu[key] / 1000 / rounds, 3),
                     cpu_x_subprocess=ratio(cpu[key], cpu["subprocess"]))
        res["commands"][key] = s
    return res


def _cgroup_usage():
    """usage_usec of this process's cgroup v2 (0 where it cannot be read)."""
    try:
        from benchlib import own_cgroup_dir
        path = os.path.join(own_cgroup_dir(), "cpu.stat")
    except Exception:
        return lambda: 0

    def usage():
        try:
            with open(path) as f:
                return int(f.readline().split()[1])
        except (OSError, ValueError, IndexError):
            return 0
    return usage


def targets(metric, add):
    for key in ("reaper-run", "reaper-run-pgroup"):
        c = metric["commands"].get(key)
        x = c and c.get("x_subprocess")
        base = metric["commands"]["subprocess"]["median"]
        add("api", f"reaper.run(['true']) <= {TARGET_X:g}x subprocess.run(['true'])", key,
            None if x is None else f"{x:.2f}x", None if x is None else x <= TARGET_X,
            "" if not c else f"{c['median']:.2f} ms vs {base:.2f} ms")


def markdown(metric):
    lines = [f"Python API (median of {metric['rounds']} interleaved calls; the first call, "
             f"which starts the fork server, took {metric['first_call_ms']:.1f} ms):", "",
             "| call | wall ms | ×subprocess | CPU ms (all processes) | ×subprocess |",
             "|---|---|---|---|---|"]
    for key, c in metric["commands"].items():
        cpu = (f"{c['cpu_ms']:.2f} | {c['cpu_x_subprocess']:.2f}×" if c.get("cpu_ms") is not None
               else "— | —")
        lines.append(f"| `{c['label']}` | {c['median']:.2f} | {c['x_subprocess']:.2f}× | {cpu} |")
    ph = metric["phases"]
    lines.append(f"| (phase) `reaper.Job(['true'])` until it runs | {ph['start']['median']:.2f} | | | |")
    lines.append(f"| (phase) `job.wait()` until collected | {ph['collect']['median']:.2f} | | | |")
    lines.append("")
    return lines
