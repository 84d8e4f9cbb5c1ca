"""The Python API (reaper.run, reaper.Job): whole trees collected, in a process of their own.

Each scenario is a small Python program -- the *caller* -- started inside the
test's cgroup (see conftest), so everything the API starts on its behalf (fork
server, supervisors, jobs, escaped daemons) is in that cgroup too, and "nothing
survives" is read from the kernel once the caller has exited.  Callers report
what they saw as `key value` lines and one final JSON line.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import HELPERS, Lines, cg_wait_empty

pytestmark = pytest.mark.timeout(90)

PRELUDE = f"""\
import json, os, signal, sys, time
sys.path.insert(0, {HELPERS!r})
import reaper
HELPERS = {HELPERS!r}
PY = sys.executable
def helper(name, *args):
    return [PY, os.path.join(HELPERS, name), *args]
def say(*words):
    print(*words, flush=True)
def alive(pid):
    try:
        with open(f"/proc/{{pid}}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
"""

# A grandchild that left the session, ignores TERM and holds the job's stdout.
HOLDER = ("(setsid sh -c 'trap \"\" TERM; exec sleep 300' &); "
          "echo out; echo err >&2")


def caller(sandbox, code, *args, **kw):
    path = sandbox.tmp / f"caller{len(sandbox.procs)}.py"
    path.write_text(PRELUDE + textwrap.dedent(code))
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return sandbox.spawn([sys.executable, str(path), *args], **kw)


def run_caller(sandbox, code, timeout=60):
    proc = caller(sandbox, code)
    out, err = proc.communicate(timeout=timeout)
    out, err = out.decode(errors="replace"), err.decode(errors="replace")
    assert proc.returncode == 0, f"caller failed ({proc.returncode}):\n{out}\n{err}"
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(params=["cgroup", "pgroup"])
def containment(request):
    return request.param


def test_run_returns_once_collected_even_if_a_grandchild_holds_the_pipe(sandbox, containment):
    got = run_caller(sandbox, f"""
        t0 = time.monotonic()
        r = reaper.run(["sh", "-c", {HOLDER!r}], capture_output=True, grace=0.5,
                       containment={containment!r})
        say(json.dumps(dict(code=r.returncode, out=r.stdout.decode(), err=r.stderr.decode(),
                            elapsed=time.monotonic() - t0, containment=r.containment,
                            pidns=r.pidns)))
    """)
    assert got["code"] == 0 and got["out"] == "out\n" and got["err"] == "err\n"
    assert got["elapsed"] < 20      # not the 300 s the grandchild would hold the pipe
    assert got["containment"] == containment
    assert got["pidns"] == (containment == "pgroup")   # no cgroup: the job lives in a pid namespace
    sandbox.assert_empty()


def test_timeout_bounds_the_whole_tree_and_says_so(sandbox, containment):
    got = run_caller(sandbox, f"""
        r = reaper.run(helper("escape.py", "2", "--ignore-term", "--stay"), timeout=0.5, grace=0.5,
                       containment={containment!r}, stdout=reaper.DEVNULL)
        try:
            r.check_returncode()
        except reaper.JobTimeout as e:
            code = e.code
        say(json.dumps(dict(timed_out=r.timed_out, signal=r.signal, exit_code=r.exit_code, code=code)))
    """)
    assert got["timed_out"] and got["exit_code"] == 124 and got["code"] == 124
    # With a pid namespace (no cgroup) the status is the namespace init's: it mirrors the
    # command's, unless the TERM-ignoring daemons kept the init alive until the SIGKILL.
    assert got["signal"] in ((signal.SIGTERM, signal.SIGKILL) if containment == "pgroup"
                             else (signal.SIGTERM,))
    sandbox.assert_empty()


def test_exit_status_signal_input_and_text(sandbox):
    got = run_caller(sandbox, """
        a = reaper.run(["sh", "-c", "exit 3"])
        b = reaper.run(["sh", "-c", "kill -KILL $$"])
        c = reaper.run(["tr", "a-z", "A-Z"], input="hello", capture_output=True, text=True)
        try:
            reaper.run(["sh", "-c", "exit 5"], check=True)
        except reaper.JobFailed as e:
            failed = (e.code, e.result.returncode)
        say(json.dumps(dict(a=[a.returncode, a.signal], b=[b.returncode, b.signal, b.exit_code],
                            c=c.stdout, failed=failed)))
    """)
    assert got["a"] == [3, None]
    assert got["b"] == [-9, 9, 137]
    assert got["c"] == "HELLO"
    assert got["failed"] == [5, 5]
    sandbox.assert_empty()


def test_leaving_the_block_by_an_exception_collects_the_whole_job(sandbox, containment):
    got = run_caller(sandbox, f"""
        try:
            with reaper.Job(helper("escape.py", "2", "--ignore-term", "--stay"), grace=0.5,
                            stdout=reaper.PIPE, containment={containment!r}) as job:
                while not job.stdout.readline().startswith(b"ready"):
                    pass
                procs = job.processes()
                raise KeyError("boom")
        except KeyError:
            pass
        escaped = [p.pid for p in procs if p.left_session]
        say(json.dumps(dict(escaped=escaped, alive=[alive(p.pid) for p in procs],
                            main=[p.pid for p in procs if p.main] == [job.pid],
                            result=[job.result.returncode, job.result.signal])))
    """)
    assert len(got["escaped"]) >= 2         # the two daemons, listed with host pids
    assert not any(got["alive"])            # all gone before the block was left
    assert got["main"]
    assert got["result"] in ([[-15, 15], [-9, 9]] if containment == "pgroup" else [[-15, 15]])
    sandbox.assert_empty()


def test_the_job_inherits_no_descriptor_of_the_api(sandbox):
    got = run_caller(sandbox, """
        r = reaper.run(["sh", "-c", "ls /proc/$$/fd"], capture_output=True, stdin=reaper.DEVNULL)
        say(json.dumps(sorted(int(x) for x in r.stdout.split())))
    """)
    assert got[:3] == [0, 1, 2] and len(got) <= 4      # ls's own directory fd may be listed
    sandbox.assert_empty()


def test_wait_stop_signal_ports_and_stats_of_a_running_job(sandbox):
    got = run_caller(sandbox, """
        with reaper.Job(helper("listener.py"), stdout=reaper.PIPE, grace=0.5) as job:
            port = int(job.stdout.readline().split()[1])
            job.stdout.readline()
            try:
                job.wait(timeout=0.2)
                waited = "returned"
            except reaper.WaitTimeout:
                waited = "timeout"
            ports = job.ports()
            stats = job.stats()
            job.signal(signal.SIGUSR1)        # listener.py does not handle it: the group dies
            r = job.wait(timeout=30)
        say(json.dumps(dict(waited=waited, port=port,
                            listening=[p["local"] for p in ports if p.get("state") == "LISTEN"],
                            processes=stats.get("processes"), result=[r.returncode, r.signal])))
    """)
    assert got["waited"] == "timeout"
    assert any(local.endswith(f":{got['port']}") for local in got["listening"]), got
    assert got["processes"] == 3
    assert got["result"] == [-signal.SIGUSR1, signal.SIGUSR1]
    sandbox.assert_empty()


def test_stop_with_a_short_grace_kills_term_ignorers(sandbox):
    got = run_caller(sandbox, """
        job = reaper.Job(["sh", "-c", "trap '' TERM; echo ready; exec sleep 300"], stdout=reaper.PIPE)
        job.stdout.readline()
        t0 = time.monotonic()
        r = job.stop(grace=0.3)
        say(json.dumps(dict(elapsed=time.monotonic() - t0, signal=r.signal)))
    """)
    assert got["signal"] == signal.SIGKILL
    assert got["elapsed"] < 9       # not the default 10 s grace
    sandbox.assert_empty()


def test_start_failures_and_bad_arguments_are_exceptions_with_the_cli_codes(sandbox):
    got = run_caller(sandbox, """
        out = {}
        def attempt(key, fn):
            try:
                fn()
                out[key] = "no exception"
            except reaper.ReaperError as e:
                out[key] = [type(e).__name__, e.code, isinstance(e, ValueError)]
        attempt("notfound", lambda: reaper.run(["/nonexistent/cmd"]))
        attempt("noexec", lambda: reaper.run([os.devnull]))
        attempt("string", lambda: reaper.run("ls -l"))
        attempt("empty", lambda: reaper.run([]))
        attempt("timeout", lambda: reaper.run(["true"], timeout=-1))
        attempt("grace", lambda: reaper.run(["true"], grace="soon"))
        attempt("signal", lambda: reaper.run(["true"], stop_signal=999))
        attempt("containment", lambda: reaper.run(["true"], containment="jail"))
        attempt("name", lambda: reaper.run(["true"], name="a/b"))
        attempt("cwd", lambda: reaper.run(["true"], cwd="/nonexistent"))
        attempt("both", lambda: reaper.run(["true"], capture_output=True, stdout=reaper.DEVNULL))
        attempt("units", lambda: reaper.run(["true"], memory_max="12 parsecs"))
        attempt("range", lambda: reaper.run(["true"], pids_max=-3))
        say(json.dumps(out))
    """)
    assert got["notfound"] == ["CommandNotFound", 127, False]
    assert got["noexec"] == ["CommandNotExecutable", 126, False]
    for key in ("string", "empty", "timeout", "grace", "signal", "containment", "name", "both",
                "units", "range"):
        assert got[key] == ["UsageError", 125, True], (key, got[key])
    assert got["cwd"][1] == 125
    sandbox.assert_empty()


def test_caller_is_no_subreaper_and_keeps_its_own_exit_statuses_with_threads(sandbox):
    got = run_caller(sandbox, """
        import subprocess, threading, _prctl
        own = subprocess.Popen(["sh", "-c", "sleep 0.5; exit 7"])
        results = []
        def worker(i):
            results.append(reaper.run(["sh", "-c", f"(setsid sleep 300 &); exit {i}"],
                                      grace=0.2).returncode)
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        say(json.dumps(dict(own=own.wait(), results=sorted(results),
                            subreaper=_prctl.prctl(_prctl.PR_GET_CHILD_SUBREAPER),
                            threads=threading.active_count())))
    """)
    assert got["own"] == 7
    assert got["results"] == [0, 1, 2, 3]
    assert got["subreaper"] == 0
    sandbox.assert_empty()


@pytest.mark.parametrize("containment", ["cgroup", "pgroup"])
def test_sigkilled_caller_leaves_nothing_of_the_job(sandbox, containment):
    proc = caller(sandbox, f"""
        job = reaper.Job(helper("escape.py", "2", "--ignore-term", "--stay"), grace=0.5,
                         stdout=reaper.PIPE, containment={containment!r})
        for line in iter(job.stdout.readline, b""):
            say(line.decode().strip())
            if line.startswith(b"ready"):
                break
        time.sleep(300)
    """)
    lines = Lines(proc.stdout)
    daemons = []
    while True:
        line = lines.next(30)
        assert line is not None, lines.seen
        if line.startswith("daemon"):
            daemons.append(int(line.split()[1]))
        if line.startswith("ready"):
            break
    proc.kill()
    proc.wait(timeout=10)
    assert cg_wait_empty(sandbox.path, timeout_s=30), sandbox.job_pids()
    assert len(daemons) == 2
    sandbox.assert_empty()


def test_sigkilled_supervisor_is_reported_and_its_cgroup_collected(sandbox):
    got = run_caller(sandbox, """
        job = reaper.Job(helper("escape.py", "2", "--ignore-term", "--stay"), stdout=reaper.PIPE,
                         containment="cgroup")
        lines = [job.stdout.readline() for _ in range(3)]
        daemons = [int(l.split()[1]) for l in lines if l.startswith(b"daemon")]
        os.kill(job.supervisor_pid, signal.SIGKILL)
        try:
            job.wait(timeout=30)
            error = None
        except reaper.SupervisorLost as e:
            error = [str(e), e.code]
        say(json.dumps(dict(error=error, alive=[alive(p) for p in daemons],
                            cgroup=os.path.exists(job.cgroup))))
    """)
    assert got["error"] and got["error"][1] == 125 and "collected" in got["error"][0]
    assert got["alive"] == [False, False]
    assert not got["cgroup"]
    sandbox.assert_empty()


def test_the_job_gets_cwd_env_and_stdin(sandbox, tmp_path):
    got = run_caller(sandbox, f"""
        r = reaper.run(["sh", "-c", "pwd; echo $FOO; cat"], cwd={str(tmp_path)!r},
                       env=dict(os.environ, FOO="bar"), input=b"in", capture_output=True)
        say(json.dumps(r.stdout.decode().split()))
    """)
    assert got == [str(tmp_path), "bar", "in"]
    sandbox.assert_empty()


def test_reaper_run_does_not_import_into_reaper_exec():
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HELPERS.rstrip("/").rsplit("/", 1)[0]))
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "reaper", "--version"],
                       capture_output=True, env=env, timeout=30)
    modules = [line.split("|")[-1].strip() for line in r.stderr.decode().splitlines()]
    for heavy in ("reaper.api", "reaper.aio", "typing", "subprocess"):
        assert heavy not in modules


def test_result_carries_the_accounting_of_the_whole_job(sandbox):
    got = run_caller(sandbox, """
        r = reaper.run(["sh", "-c", "(setsid sleep 300 &); exit 2"], grace=0.3)
        q = reaper.run(["true"], stats=False)
        say(json.dumps(dict(stats=r.stats, none=q.stats)))
    """)
    stats = got["stats"]
    assert stats["exit_code"] == 2 and stats["leftovers_killed"] == 1, stats
    assert stats["wall_s"] > 0 and stats["cpu_source"], stats
    assert got["none"] is None
    sandbox.assert_empty()


def test_result_and_returncode_poll_without_blocking(sandbox):
    got = run_caller(sandbox, """
        job = reaper.Job(["sh", "-c", "read x; exit 4"], stdin=reaper.PIPE)
        before = [job.result, job.returncode]
        job.stdin.write(b"go\\n")
        job.stdin.close()
        deadline = time.monotonic() + 30
        while job.returncode is None and time.monotonic() < deadline:
            time.sleep(0.01)
        say(json.dumps(dict(before=before, after=job.returncode)))
    """)
    assert got == {"before": [None, None], "after": 4}
    sandbox.assert_empty()


def test_ctrl_c_twice_in_a_with_block_kills_and_still_collects_before_leaving(sandbox):
    # The job reports TERM and ignores it; grace 60 s.  The first Ctrl-C (SIGINT)
    # starts the stop; the second, while the block waits for the job, kills it;
    # the block is left once the job is collected, with one KeyboardInterrupt.
    proc = caller(sandbox, """
        with reaper.Job(helper("signals.py"), grace=60) as job:
            job.wait()
    """)
    lines = Lines(proc.stdout)
    lines.until("ready ", 30)
    proc.send_signal(signal.SIGINT)
    assert lines.until("got TERM", 30) == "got TERM"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)       # well within the 60 s grace
    err = proc.stderr.read().decode()
    assert proc.returncode == -signal.SIGINT, err
    assert err.count("KeyboardInterrupt") == 1, err
    sandbox.assert_empty()
