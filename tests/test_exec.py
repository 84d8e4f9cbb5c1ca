"""`reaper exec`: every descendant is collected, in both containment modes.

Each test runs reaper inside its own test cgroup (see conftest), so "nothing
survives" is read from the kernel: the test cgroup has no process left the
moment reaper returns.  Every scenario runs with --containment cgroup and
--containment pgroup.
"""

import os
import signal
import socket
import subprocess

import psutil
import pytest

from conftest import Lines, helper, zombie_children

pytestmark = pytest.mark.timeout(60)


def test_watch_top_stopped_after_one_second_leaves_nothing(sandbox, mode):
    log = sandbox.tmp / "top.log"
    code, _, err = sandbox.run("exec", "--containment", mode, "--timeout", "1s", "--",
                               "bash", "-c", f"watch top >{log}")
    assert code == 124, err
    sandbox.assert_empty()


def test_grandchild_port_is_free_once_the_parent_is_killed(sandbox, mode):
    proc = sandbox.reaper("exec", "--containment", mode, "--grace", "5s", "--", *helper("listener.py"),
                          stdout=subprocess.PIPE)
    lines = Lines(proc.stdout)
    port = int(lines.until("port ").split()[1])
    main = int(lines.until("ready ").split()[1])
    assert _listening(port)
    os.kill(main, signal.SIGKILL)
    assert proc.wait(timeout=30) == 128 + signal.SIGKILL
    sandbox.assert_empty()
    assert not _listening(port)
    with socket.socket() as sock:      # and it can be bound again right away
        sock.bind(("127.0.0.1", port))


def _listening(port):
    """Is anything listening on 127.0.0.1:port?  Asked of the kernel via sock_diag."""
    from pyroute2 import DiagSocket
    with DiagSocket() as diag:
        diag.bind()
        for msg in diag.get_sock_stats(family=socket.AF_INET, states=1 << 10):  # TCP_LISTEN
            if msg["idiag_sport"] == port:
                return True
    return False


SETSID_TREE = "(setsid sleep 1000 &); sleep 1000"


def test_setsid_daemon_is_collected_when_reaper_gets_term(sandbox, mode):
    proc = sandbox.reaper("exec", "--containment", mode, "--", "sh", "-c", SETSID_TREE)
    _wait_for_count(sandbox, "sleep", 2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM   # reaper dies of the TERM it forwarded (cli.exit_like_the_job)
    sandbox.assert_empty()


def test_negative_control_setsid_daemon_survives_plain_killpg(sandbox):
    proc = sandbox.spawn(["sh", "-c", SETSID_TREE], start_new_session=True)
    _wait_for_count(sandbox, "sleep", 2)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)
    survivors = [p for p in sandbox.job_pids() if _name(p) == "sleep"]
    assert survivors, "control failed: the setsid'd sleep should escape killpg"
    sandbox.kill_all()


def _name(pid):
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return None


def _wait_for_count(sandbox, name, count, timeout_s=10.0):
    """Wait (bounded) until `count` processes named `name` run in the test cgroup.

    No event announces a process reaching exec, so this polls /proc with a deadline.
    """
    import time
    deadline = time.monotonic() + timeout_s
    while sum(_name(p) == name for p in sandbox.job_pids()) < count:
        assert time.monotonic() < deadline, f"{name} x{count} never started"
        time.sleep(0.01)


def test_main_exit_status_is_kept_and_daemon_is_collected(sandbox, mode):
    code, out, err = sandbox.run("exec", "--containment", mode, "--", *helper("escape.py"), "2", "--exit", "3")
    assert code == 3, err
    assert out.count(b"daemon ") == 2
    sandbox.assert_empty()


def test_wait_all_waits_for_the_daemon_to_finish(sandbox, mode):
    proc = sandbox.reaper("exec", "--containment", mode, "--wait-all", "--", "sh", "-c",
                          "exec 3<&0; (setsid sh -c 'read line <&3; echo daemon-done' &); echo main-done; exit 5",
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    lines = Lines(proc.stdout)
    assert lines.next() == "main-done"
    # The main process is gone, but reaper waits for the daemon...
    assert proc.poll() is None
    assert len(sandbox.job_pids()) >= 2        # reaper and the daemon
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    assert lines.next() == "daemon-done"
    assert proc.wait(timeout=30) == 5
    sandbox.assert_empty()


def test_term_ignoring_setsid_grandchild_is_killed_after_grace(sandbox, mode):
    proc = sandbox.reaper("exec", "--containment", mode, "--grace", "300ms", "--",
                          *helper("escape.py"), "1", "--ignore-term", "--stay", stdout=subprocess.PIPE)
    lines = Lines(proc.stdout)
    daemon = psutil.Process(int(lines.until("daemon ").split()[1]))
    lines.until("ready ")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM   # reaper dies of the TERM it forwarded (cli.exit_like_the_job)
    assert not daemon.is_running()
    sandbox.assert_empty()


def test_runaway_forker_converges_to_zero_survivors(sandbox, mode):
    proc = sandbox.reaper("exec", "--containment", mode, "--grace", "200ms", "--",
                          *helper("forker.py"), "4", "100", "200", stdout=subprocess.PIPE)
    Lines(proc.stdout).until("ready ", timeout_s=30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=45) in (-signal.SIGTERM, 128 + signal.SIGKILL)
    sandbox.assert_empty()


@pytest.mark.parametrize("script, expected", [
    ("exit 7", 7),
    ("kill -KILL $$", 137),
    ("kill -SEGV $$", 139),
])
def test_exit_status_of_the_main_process(sandbox, mode, script, expected):
    code, _, err = sandbox.run("exec", "--containment", mode, "--", "sh", "-c", script)
    assert code == expected, err
    assert err == b""


def test_timeout_exits_124(sandbox, mode):
    code, _, err = sandbox.run("exec", "--containment", mode, "--timeout", "200ms", "--", "sleep", "100")
    assert code == 124, err
    sandbox.assert_empty()


def test_not_executable_exits_126(sandbox, mode):
    script = sandbox.tmp / "noexec.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    code, _, err = sandbox.run("exec", "--containment", mode, "--", str(script))
    assert code == 126
    assert err.startswith(b"reaper: ") and err.count(b"\n") == 1


def test_not_found_exits_127(sandbox, mode):
    code, _, err = sandbox.run("exec", "--containment", mode, "--", "no-such-command-reaper")
    assert code == 127
    assert err == b"reaper: no-such-command-reaper: command not found\n"


@pytest.mark.parametrize("name", ["HUP", "INT", "QUIT", "USR1", "USR2", "TERM", "WINCH", "CONT"])
def test_forwarded_signal_reaches_the_job(sandbox, mode, name):
    # -v: reaper's account of the stop reaches the failure report.  The grace
    # is long: the job exits at once on TERM, and this is not a grace test.
    # (Seen once with 5 s, in the systemd lane's user run on a loaded machine:
    # 137, the job SIGKILLed; no log then, cause not established.)
    proc = sandbox.reaper("exec", "-v", "--containment", mode, "--grace", "60s", "--",
                          *helper("signals.py"), "--stop-exit", "42", stdout=subprocess.PIPE)
    lines = Lines(proc.stdout)
    lines.until("ready ")
    proc.send_signal(getattr(signal, "SIG" + name))
    assert lines.until("got ") == f"got {name}"
    if name not in ("TERM", "INT", "QUIT"):
        proc.send_signal(signal.SIGTERM)
    # The job traps the stop signal and exits 42: reaper reports 42.
    assert proc.wait(timeout=30) == 42
    sandbox.assert_empty()


def test_no_zombie_lingers_after_200_orphans(sandbox, mode):
    proc = sandbox.reaper("exec", "--containment", mode, "--", *helper("orphans.py"), "200",
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    Lines(proc.stdout).until("done", timeout_s=30)
    supervisor = psutil.Process(proc.pid)
    # Each orphan's SIGCHLD wakes reaper, which reaps it; no event tells the
    # test that the last one was reaped, so poll with a deadline.
    import time
    deadline = time.monotonic() + 10
    while True:
        zombies = zombie_children(supervisor)
        if not zombies or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert zombies == []
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    sandbox.assert_empty()


def test_50_mb_of_random_bytes_pass_through_cat_unchanged(sandbox, mode):
    data = os.urandom(50 * 1024 * 1024)
    proc = sandbox.reaper("exec", "--containment", mode, "--", "cat",
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, _ = proc.communicate(data, timeout=60)
    assert proc.returncode == 0
    assert out == data


def test_twenty_jobs_at_once_all_collected_no_cgroup_left(sandbox, mode):
    procs = [sandbox.reaper("exec", "--containment", mode, "--name", f"job{i}", "--",
                            *helper("escape.py"), "1", "--exit", str(i), stdout=subprocess.DEVNULL)
             for i in range(20)]
    assert [p.wait(timeout=45) for p in procs] == list(range(20))
    sandbox.assert_empty()
    assert not [d for d in os.listdir(sandbox.path) if os.path.isdir(os.path.join(sandbox.path, d))]


def test_job_cgroup_is_a_child_of_reapers_cgroup_and_reaper_stays_outside(sandbox):
    proc = sandbox.reaper("exec", "--containment", "cgroup", "--name", "probe", "--",
                          "sh", "-c", "cat /proc/self/cgroup; read x; exit 0", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    line = Lines(proc.stdout).until("0::")
    job_dir = os.path.basename(line[3:])
    assert job_dir == f"reaper.{proc.pid}.probe"
    with open(f"/proc/{proc.pid}/cgroup") as f:
        reaper_cg = [x for x in f.read().splitlines() if x.startswith("0::")][0]
    assert line[3:] == reaper_cg[3:] + "/" + job_dir
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    assert not os.path.exists(os.path.join(sandbox.path, job_dir))


def test_environment_and_cwd_pass_through(sandbox, mode):
    env = dict(sandbox.env, REAPER_PROBE="x y z")
    code, out, _ = sandbox.run("exec", "--containment", mode, "--", "sh", "-c", 'echo "$REAPER_PROBE"; pwd',
                               env=env, cwd=str(sandbox.tmp))
    assert code == 0
    assert out.decode().splitlines() == ["x y z", str(sandbox.tmp)]


def test_normal_run_prints_nothing_of_reapers_own(sandbox, mode):
    code, out, err = sandbox.run("exec", "--containment", mode, "--", "true")
    assert (code, out, err) == (0, b"", b"")


def test_verbose_says_which_containment_and_why(sandbox, mode):
    code, _, err = sandbox.run("exec", "-v", "--containment", mode, "--", "true")
    assert code == 0
    first = err.decode().splitlines()[0]
    assert first.startswith(f"reaper: containment: {mode}: ")


def test_forced_freeze_fallback_collects_escaped_daemons(sandbox):
    env = dict(sandbox.env, REAPER_NO_CGROUP_KILL="1")
    code, _, err = sandbox.run("exec", "-v", "--containment", "cgroup", "--grace", "200ms", "--",
                               *helper("escape.py"), "3", "--ignore-term", "--exit", "0", env=env)
    assert code == 0
    assert b"freeze, signal, thaw" in err
    sandbox.assert_empty()


def test_exec_path_imports_no_heavy_module(sandbox):
    code, _, err = sandbox.run("exec", "--", "true", env=dict(sandbox.env, PYTHONPROFILEIMPORTTIME="1"))
    assert code == 0
    imported = {line.split("|")[-1].strip() for line in err.decode().splitlines() if "|" in line}
    assert not imported & {"subprocess", "psutil", "pyroute2", "argparse", "logging", "json", "prctl"}


@pytest.mark.parametrize("no_clone3", ["", "1"], ids=["clone3", "fork+join"])
def test_job_is_inside_its_cgroup_before_exec_either_way(sandbox, no_clone3):
    env = dict(sandbox.env, REAPER_NO_CLONE3=no_clone3)
    code, out, err = sandbox.run("exec", "--containment", "cgroup", "--name", "born", "--",
                                 "cat", "/proc/self/cgroup", env=env)
    assert code == 0, err
    assert b"/reaper." in out and b".born\n" in out


def test_job_inherits_no_descriptor_of_reapers_own(sandbox, mode):
    code, out, err = sandbox.run("exec", "--containment", mode, "--", "ls", "/proc/self/fd")
    assert code == 0, err
    assert sorted(int(fd) for fd in out.split()) == [0, 1, 2, 3]    # 3: ls's own directory handle


def test_job_starts_with_no_blocked_or_ignored_signal(sandbox, mode):
    code, out, err = sandbox.run("exec", "--containment", mode, "--", "grep", "-E", "^Sig(Blk|Ign)",
                                 "/proc/self/status")
    assert code == 0, err
    assert out.decode().split() == ["SigBlk:", "0" * 16, "SigIgn:", "0" * 16]


def test_reaper_dies_of_the_stop_signal_it_forwarded_and_the_job_died_of(sandbox):
    # What systemd (KillMode=mixed) and a shell (Ctrl-C in a loop) expect of a
    # clean stop: the job died of the signal reaper passed on, so reaper dies of it too.
    proc = sandbox.reaper("exec", "--", "sh", "-c", "echo ready; exec sleep 1000", stdout=subprocess.PIPE)
    Lines(proc.stdout).until("ready")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == -signal.SIGINT
    sandbox.assert_empty()


def test_a_job_killed_by_a_signal_reaper_did_not_forward_gives_128_plus_n(sandbox):
    # An unexpected death stays a failure with the real status (systemd: failed, ExecMainStatus=143).
    code, _, err = sandbox.run("exec", "--", "sh", "-c", "kill -TERM $$")
    assert code == 128 + signal.SIGTERM, err
    sandbox.assert_empty()
