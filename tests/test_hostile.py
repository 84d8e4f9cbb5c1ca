"""A hostile job: the promise holds whatever the job does.

"reaper returns only when nothing of the job is left, with the job's status,
and never signals anything else" — tested against jobs that escape, trap and
delay TERM, move processes out of their cgroup, move reaper into it, take its
lock, signal it with everything, and recycle pids.  Each test failed before
the fix it guards (see the issue for the numbered defects).
"""

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from conftest import Lines, describe, helper, require

pytestmark = pytest.mark.timeout(90)


def one_line(err):
    return err.startswith(b"reaper: ") and err.count(b"\n") == 1


def wait_gone(pid, timeout_s=20.0):
    """Block on a pidfd until `pid` has exited (the pid is pinned by the fd)."""
    import select
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout_s)[0])
    finally:
        os.close(fd)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2:][:1] not in (b"Z", b"X")


def state(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rfind(b")") + 2:][:1].decode()


def wait_state(pid, wanted, timeout_s=10.0):
    """No event reports another process's stop: poll /proc with a deadline."""
    deadline = time.monotonic() + timeout_s
    while state(pid) != wanted:
        assert time.monotonic() < deadline, f"{describe(pid)} never reached state {wanted}"
        time.sleep(0.01)


# -- graceful stop -------------------------------------------------------------

def test_escaped_daemon_gets_term_and_the_full_grace_to_shut_down(sandbox, mode):
    release = sandbox.tmp / "release"
    os.mkfifo(release)
    proc = sandbox.reaper("exec", "--containment", mode, "--grace", "60s", "--",
                          *helper("graceful.py"), str(release), stdout=subprocess.PIPE)
    lines = Lines(proc.stdout)
    daemon = int(lines.until("daemon ").split()[1])
    main = int(lines.until("ready ").split()[1])
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert lines.until("daemon got TERM") == f"daemon got TERM {daemon}"
    assert wait_gone(main), "the main process should die of TERM"
    # The main process is gone; the daemon is still flushing: reaper waits.
    assert alive(daemon) and proc.poll() is None
    with open(release, "w") as f:
        f.write("done")
    assert proc.wait(timeout=30) == -signal.SIGTERM   # dies of the TERM it forwarded (cli.exit_like_the_job)
    assert time.monotonic() - start < 30, "reaper must not have waited for SIGKILL"
    sandbox.assert_empty()


def test_main_exit_gives_the_escaped_daemon_term_and_the_grace(sandbox, mode):
    release = sandbox.tmp / "release"
    os.mkfifo(release)
    proc = sandbox.reaper("exec", "--containment", mode, "--grace", "60s", "--",
                          *helper("graceful.py"), str(release), stdout=subprocess.PIPE)
    lines = Lines(proc.stdout)
    daemon = int(lines.until("daemon ").split()[1])
    main = int(lines.until("ready ").split()[1])
    os.kill(main, signal.SIGKILL)
    assert lines.until("daemon got TERM") == f"daemon got TERM {daemon}"
    assert alive(daemon) and proc.poll() is None
    with open(release, "w") as f:
        f.write("done")
    assert proc.wait(timeout=30) == 128 + signal.SIGKILL
    sandbox.assert_empty()


def test_second_term_kills_at_once(sandbox, mode):
    proc = sandbox.reaper("exec", "--containment", mode, "--grace", "60s", "--",
                          *helper("escape.py"), "2", "--ignore-term", "--stay", stdout=subprocess.PIPE)
    main = int(Lines(proc.stdout).until("ready ").split()[1])
    proc.send_signal(signal.SIGTERM)
    assert wait_gone(main)      # reaper is stopping: the daemons ignore TERM, the grace is long
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM   # dies of the TERM it forwarded (cli.exit_like_the_job)
    sandbox.assert_empty()


# -- 1, 2: processes moved between cgroups (root jobs, cgroup mode) ---------------

@pytest.mark.parametrize("stay", [False, True], ids=["main-exits", "term-to-reaper"])
def test_process_moved_out_of_the_job_cgroup_is_still_collected(sandbox, stay):
    args = [sandbox.path] + (["--stay"] if stay else [])
    proc = sandbox.reaper("exec", "--containment", "cgroup", "--grace", "60s", "--",
                          *helper("mover.py"), *args, stdout=subprocess.PIPE)
    lines = Lines(proc.stdout)
    moved = int(lines.until("moved ").split()[1])     # its write to cgroup.procs succeeded
    lines.until("ready ")
    if stay:
        # Only while the main process stays: once it exits, reaper may already
        # have collected the moved child (seen under load in the systemd lane).
        with open(os.path.join(sandbox.path, "cgroup.procs")) as f:
            assert str(moved) in f.read().split(), "the child should have left the job cgroup"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM   # dies of the TERM it forwarded (cli.exit_like_the_job)
    else:
        assert proc.wait(timeout=30) == 0
    assert not alive(moved)
    sandbox.assert_empty()


def test_term_ignoring_process_moved_out_is_killed_after_the_grace(sandbox):
    proc = sandbox.reaper("exec", "--containment", "cgroup", "--grace", "500ms", "--",
                          *helper("mover.py"), sandbox.path, "--ignore-term", stdout=subprocess.PIPE)
    moved = int(Lines(proc.stdout).until("moved ").split()[1])
    assert proc.wait(timeout=30) == 0
    assert not alive(moved)
    sandbox.assert_empty()


@pytest.mark.parametrize("freeze", [False, True], ids=["cgroup.kill", "freeze"])
def test_reaper_moved_into_the_job_cgroup_still_returns_the_job_status(sandbox, freeze):
    env = dict(sandbox.env, REAPER_NO_CGROUP_KILL="1") if freeze else None
    code, _, err = sandbox.run("exec", "--containment", "cgroup", "--grace", "1s", "--",
                               *helper("intruder.py"), "2", "7", env=env)
    assert code == 7, err
    sandbox.assert_empty()


# -- 3: a job that stops its supervisor ------------------------------------------

def test_pidns_hides_reaper_from_a_job_that_would_stop_it(sandbox):
    code, _, err = sandbox.run("exec", "--pidns", "--timeout", "1s", "--",
                               "sh", "-c", 'kill -STOP $PPID 1 2>/dev/null; exec sleep 1000')
    if code == 125 and b"cannot create a pid namespace" in err:
        pytest.skip(err.decode().strip())
    assert code == 124, err
    sandbox.assert_empty()


def test_verbose_says_the_job_can_stop_reaper(sandbox):
    code, _, err = sandbox.run("exec", "-v", "--", "true")
    assert code == 0
    assert b"--pidns hides it" in err


# -- 4, 11: stale-job collection -----------------------------------------------------

def test_gc_collects_a_job_whose_daemon_took_the_lock_after_reaper_died(sandbox):
    proc = sandbox.reaper("exec", "--containment", "cgroup", "--", *helper("locker.py"),
                          stdout=subprocess.PIPE)
    lines = Lines(proc.stdout)
    daemon = int(lines.until("daemon ").split()[1])
    lines.until("ready ")
    job = [d for d in os.listdir(sandbox.path) if d.startswith("reaper.")]
    proc.kill()
    proc.wait(timeout=10)
    assert lines.until("locked ") == f"locked {daemon}"
    code, out, err = sandbox.run("gc", "--cgroup-parent", sandbox.path)
    assert code == 0, err
    assert out.decode().split() == ["removed", os.path.join(sandbox.path, job[0])]
    assert wait_gone(daemon)
    sandbox.assert_empty()


def test_housekeeping_never_touches_a_directory_reaper_did_not_make(sandbox):
    fake = os.path.join(sandbox.path, "reaper.999999.not-ours")
    os.mkdir(fake)
    bystander = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL,
                                 preexec_fn=lambda: open(os.path.join(fake, "cgroup.procs"), "w").write("0"))
    try:
        assert sandbox.run("exec", "--", "true")[0] == 0
        code, out, _ = sandbox.run("gc", "--cgroup-parent", sandbox.path)
        assert code == 0 and out == b""
        assert bystander.poll() is None and os.path.isdir(fake)
    finally:
        bystander.kill()
        bystander.wait()
        os.rmdir(fake)


def test_cgroup_parent_inside_a_live_job_is_refused(sandbox):
    proc = sandbox.reaper("exec", "--containment", "cgroup", "--", "sleep", "1000")
    deadline = time.monotonic() + 10
    while not [d for d in os.listdir(sandbox.path) if d.startswith("reaper.")]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    job = [d for d in os.listdir(sandbox.path) if d.startswith("reaper.")][0]
    code, _, err = sandbox.run("exec", "--cgroup-parent", os.path.join(sandbox.path, job), "--", "true")
    assert code == 125 and one_line(err) and b"jobs do not nest" in err
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM   # dies of the TERM it forwarded (cli.exit_like_the_job)


# -- 5: every signal that would end reaper ------------------------------------------

ODD_SIGNALS = [signal.SIGALRM, signal.SIGPWR, signal.SIGVTALRM, signal.SIGPROF, signal.SIGIO,
               signal.SIGSTKFLT, signal.SIGRTMIN + 3, signal.SIGRTMAX]


@pytest.mark.parametrize("sig", ODD_SIGNALS, ids=lambda s: signal.Signals(s).name if s in
                         signal.Signals.__members__.values() else f"SIG{int(s)}")
def test_signal_with_a_fatal_default_is_forwarded_not_fatal(sandbox, mode, sig):
    proc = sandbox.reaper("exec", "--containment", mode, "--grace", "5s", "--",
                          *helper("escape.py"), "1", "--stay", stdout=subprocess.PIPE)
    Lines(proc.stdout).until("ready ")
    proc.send_signal(sig)
    # The job's main process dies of it (default action); reaper collects the rest.
    assert proc.wait(timeout=30) == 128 + sig
    sandbox.assert_empty()


def test_tstp_away_from_a_terminal_suspends_the_whole_job_not_reaper(sandbox, mode):
    proc = sandbox.reaper("exec", "--containment", mode, "--", *helper("escape.py"), "1", "--stay",
                          stdout=subprocess.PIPE)
    lines = Lines(proc.stdout)
    daemon = int(lines.until("daemon ").split()[1])
    main = int(lines.until("ready ").split()[1])
    proc.send_signal(signal.SIGTSTP)
    wait_state(main, "T")
    wait_state(daemon, "T")
    assert state(proc.pid) != "T"
    proc.send_signal(signal.SIGCONT)
    wait_state(daemon, "S")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM   # dies of the TERM it forwarded (cli.exit_like_the_job)
    sandbox.assert_empty()


# -- 6: a recycled pid is not the main process --------------------------------------

def _kernel():
    release = os.uname().release.split(".")
    return int(release[0]), int("".join(c for c in release[1] if c.isdigit()) or 0)


RECYCLER = r'''
import os, signal, sys
main = os.getpid()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        parent = os.getpid()
        # Wait until reaper reaped the main process, then fork until a child gets its pid.
        while os.path.exists(f"/proc/{main}"):
            signal.sigtimedwait([signal.SIGCHLD], 0.01)
        for _ in range(5000):
            pid = os.fork()
            if pid == 0:
                if os.getpid() != main:
                    os._exit(0)
                while os.getppid() == parent:
                    signal.sigtimedwait([signal.SIGCHLD], 0.01)
                os._exit(42)     # now reaper's child, with the main process's pid
            if pid == main:
                os._exit(0)      # orphan it: it re-parents to reaper
            os.waitpid(pid, 0)
        os._exit(3)
    os._exit(0)
os.wait()
'''


def test_recycled_main_pid_does_not_overwrite_the_exit_status(sandbox, mode):
    if _kernel() < (6, 14):
        pytest.skip("needs a per-pid-namespace pid_max (Linux >= 6.14)")
    host_pid_max = open("/proc/sys/kernel/pid_max").read()
    burn = "i=0; while [ $i -lt 360 ]; do /bin/true; i=$((i+1)); done"
    script = f'echo 400 > /proc/sys/kernel/pid_max && {burn} && "$@"; echo "status $?"'
    argv = ["unshare", "--pid", "--fork", "--mount-proc", "--propagation", "private", "sh", "-c", script, "sh",
            sys.executable, "-m", "reaper", "exec", "--containment", mode, "--wait-all", "--",
            sys.executable, "-c", RECYCLER]
    proc = sandbox.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert open("/proc/sys/kernel/pid_max").read() == host_pid_max
    if proc.returncode != 0:
        pytest.skip(f"cannot make a pid namespace here: {err.decode().strip()}")
    assert out.split()[-2:] == [b"status", b"0"], (out, err)
    sandbox.assert_empty()


# -- 7: the fallback only signals what it pinned ---------------------------------------

def test_fallback_refuses_a_proc_of_another_pid_namespace(sandbox):
    require("unshare", "--pid", "--fork", "true")     # before the victims exist
    # unshare --pid without --mount-proc: /proc still shows the host's pids.
    victims = [sandbox.spawn(["sleep", "1000"]) for _ in range(5)]
    argv = ["unshare", "--pid", "--fork", "sh", "-c", '"$@"; echo "status $?"', "sh",
            sys.executable, "-m", "reaper", "exec", "--containment", "pgroup", "--",
            "sh", "-c", "(setsid sleep 1000 &); exit 0"]
    proc = sandbox.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=30)
    if b"unshare failed" in err:
        pytest.skip(err.decode().strip())
    assert out.split() == [b"status", b"125"]
    assert one_line(err) and b"/proc does not show this pid namespace" in err
    assert all(v.poll() is None for v in victims)
    sandbox.kill_all()


def test_fallback_sweep_leaves_bystanders_alone_under_pid_churn(sandbox):
    """Churn pids while the fallback stops a job; processes outside it see no signal."""
    bystanders = [sandbox.spawn(helper("signals.py"), stdout=subprocess.PIPE) for _ in range(5)]
    spies = [Lines(b.stdout) for b in bystanders]
    for spy in spies:
        spy.until("ready ")
    churn = ("import os, signal\n"
             "for _ in range(50):\n"
             "    if os.fork() == 0:\n"
             "        os.setsid()\n"
             "        while True:\n"
             "            pid = os.fork()\n"
             "            if pid == 0: os._exit(0)\n"
             "            os.waitpid(pid, 0)\n"
             "print('ready', flush=True)\n"
             "signal.pause()\n")
    proc = sandbox.reaper("exec", "--containment", "pgroup", "--grace", "300ms", "--",
                          sys.executable, "-c", churn, stdout=subprocess.PIPE)
    Lines(proc.stdout).until("ready", timeout_s=30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == -signal.SIGTERM   # dies of the TERM it forwarded (cli.exit_like_the_job)
    for b, spy in zip(bystanders, spies):
        assert b.poll() is None
        os.set_blocking(spy.fd, False)
        try:
            extra = os.read(spy.fd, 4096)
        except BlockingIOError:
            extra = b""
        assert extra == b"", f"bystander {b.pid} was signalled: {extra}"
    sandbox.kill_all()


# -- 8, 9, 10: input and output faults -----------------------------------------------------

def test_durations_beyond_24_days_work(sandbox):
    code, _, err = sandbox.run("exec", "--timeout", "1000h", "--grace", "1000h", "--",
                               "sh", "-c", "exit 3")
    assert code == 3, err
    code, _, err = sandbox.run("exec", "--timeout", "100000h", "--", "true")
    assert code == 125 and one_line(err) and b"too long" in err


def test_timeout_zero_means_no_limit(sandbox):
    code, _, err = sandbox.run("exec", "--timeout", "0", "--", "sh", "-c", "exit 5")
    assert code == 5, err


def test_empty_command_is_not_found(sandbox, mode):
    code, _, err = sandbox.run("exec", "--containment", mode, "--", "")
    assert code == 127
    assert err == b"reaper: '': command not found\n"
    sandbox.assert_empty()


@pytest.mark.parametrize("how", ["closed", "broken-pipe"])
def test_verbose_with_a_dead_stderr_still_collects_the_job(sandbox, mode, how):
    if how == "closed":
        kw = {"stderr": subprocess.DEVNULL}
        argv = ["sh", "-c", 'exec "$@" 2>&-', "sh"]
    else:
        r, w = os.pipe()
        os.close(r)
        kw = {"stderr": w}
        argv = []
    proc = sandbox.spawn(argv + [sys.executable, "-m", "reaper", "exec", "-v", "--containment", mode, "--",
                                 *helper("escape.py"), "2", "--exit", "3"], stdout=subprocess.DEVNULL, **kw)
    if how != "closed":
        os.close(w)
    assert proc.wait(timeout=30) == 3
    sandbox.assert_empty()


def test_bad_option_with_stderr_closed_is_125(sandbox):
    proc = sandbox.spawn(["sh", "-c", 'exec "$@" 2>&-', "sh", sys.executable, "-m", "reaper", "exec", "--frob"],
                         stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 125 and out == b""


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["exec", "--help"], ["exec", "-v", "-h"],
                                  ["doctor", "--help"], ["gc", "--help"]])
def test_help_everywhere(sandbox, args):
    code, out, err = sandbox.run(*args)
    assert code == 0 and err == b""
    assert out.startswith(b"usage: reaper " + (args[0].encode() if args[0][0] != "-" else b""))


def test_no_arguments_is_one_line_and_125(sandbox):
    code, out, err = sandbox.run()
    assert code == 125 and out == b"" and one_line(err)


def test_empty_cgroup_parent_is_refused(sandbox):
    code, _, err = sandbox.run("exec", "--cgroup-parent", "", "--", "true")
    assert code == 125 and one_line(err) and b"empty path" in err


def test_pid1_default_grace_finishes_before_docker_stop(sandbox):
    argv = ["unshare", "--pid", "--fork", "--mount-proc", "--propagation", "private",
            sys.executable, "-m", "reaper", "exec", "-v", "--", "sh", "-c", "(setsid sleep 1000 &); exit 0"]
    proc = sandbox.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=30)
    if proc.returncode != 0 and b"reaper:" not in err:
        pytest.skip(f"cannot make a pid namespace here: {err.decode().strip()}")
    assert proc.returncode == 0, err
    assert b"SIGKILL after 8s" in err
    sandbox.assert_empty()
