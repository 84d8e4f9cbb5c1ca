"""Bad input and faults: one `reaper:` line, the documented exit code, nothing left running.

Faults are injected for real: a cgroup that refuses children
(cgroup.max.descendants = 0), a low `ulimit -n`, a /proc hidden by a private
mount, a job cgroup emptied and removed by someone else while the job runs.
"""

import os
import signal
import subprocess
import sys

import pytest

from conftest import Lines, helper, require

pytestmark = pytest.mark.timeout(60)


def one_line(err):
    return err.startswith(b"reaper: ") and err.count(b"\n") == 1


@pytest.mark.parametrize("args, fragment", [
    (["exec", "--frobnicate", "--", "true"], b"unknown option '--frobnicate'"),
    (["exec", "--stop-signal", "SIGFOO", "--", "true"], b"unknown signal 'SIGFOO'"),
    (["exec", "--stop-signal", "99", "--", "true"], b"unknown signal '99'"),
    (["exec", "--grace", "-1", "--", "true"], b"invalid duration '-1'"),
    (["exec", "--timeout", "5x", "--", "true"], b"invalid duration '5x'"),
    (["exec", "--timeout", "", "--", "true"], b"invalid duration ''"),
    (["exec", "--timeout", "nan", "--", "true"], b"invalid duration 'nan'"),
    (["exec", "--containment", "magic", "--", "true"], b"expected auto, cgroup or pgroup"),
    (["exec", "--cgroup-parent", "/tmp", "--", "true"], b"neither under the cgroup2 mount"),
    (["exec", "--cgroup-parent", "a/../../b", "--", "true"], b"must not contain '..'"),
    (["exec", "--name", "a/b", "--", "true"], b"invalid job name 'a/b'"),
    (["exec", "--name", "a\nb", "--", "true"], b"invalid job name"),
    (["exec", "--timeout"], b"--timeout needs a value"),
    (["exec"], b"no command given"),
    (["frob"], b"unknown command 'frob'"),
])
def test_bad_input_is_one_line_and_exit_125(sandbox, args, fragment):
    code, out, err = sandbox.run(*args)
    assert code == 125
    assert one_line(err), err
    assert fragment in err
    sandbox.assert_empty()


@pytest.mark.parametrize("text, seconds", [("1.5", 1.5), ("500ms", 0.5), ("10s", 10), ("2m", 120), ("1h", 3600)])
def test_durations(text, seconds):
    from reaper.cli import parse_duration
    assert parse_duration(text, "--grace") == seconds


def test_signal_names_accept_every_spelling():
    from reaper.cli import parse_signal
    assert parse_signal("TERM") == parse_signal("sigterm") == parse_signal("15") == signal.SIGTERM


def test_cgroup_that_refuses_children_falls_back_under_auto_and_fails_under_cgroup(sandbox):
    with open(os.path.join(sandbox.path, "cgroup.max.descendants"), "w") as f:
        f.write("0")
    code, _, err = sandbox.run("exec", "-v", "--", *helper("escape.py"), "1", "--exit", "4")
    assert code == 4
    assert b"containment: pgroup: subreaper + process group, because cannot create a cgroup" in err
    sandbox.assert_empty()
    code, _, err = sandbox.run("exec", "--containment", "cgroup", "--", "true")
    assert code == 125 and one_line(err) and b"cannot create a cgroup" in err


@pytest.mark.parametrize("fds", [5, 8])
def test_too_few_file_descriptors_is_a_clean_125(sandbox, fds):
    argv = ["sh", "-c", f'ulimit -n {fds} && exec "$@"', "sh", sys.executable, "-m", "reaper", "exec", "--",
            *helper("escape.py"), "1", "--exit", "0"]
    proc = sandbox.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 125
    assert one_line(err) and b"Too many open files" in err
    sandbox.assert_empty()
    assert not [d for d in os.listdir(sandbox.path) if os.path.isdir(os.path.join(sandbox.path, d))]


def test_unreadable_mountinfo_is_a_clean_125(sandbox):
    require("unshare", "--mount", "--propagation", "private", "true")
    script = 'mount -t tmpfs none /proc && exec "$@"'
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            sys.executable, "-m", "reaper", "exec", "--", "true"]
    proc = sandbox.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 125
    assert err == b"reaper: cannot read /proc/self/mountinfo: No such file or directory\n"


def _reads(pid):
    with open(f"/proc/{pid}/io") as f:
        return int(dict(line.split(": ") for line in f.read().splitlines())["syscr"])


def test_job_cgroup_removed_under_reaper_still_collects_everything(sandbox):
    proc = sandbox.reaper("exec", "--containment", "cgroup", "--grace", "300ms", "--",
                          *helper("escape.py"), "2", "--ignore-term", "--stay", stdout=subprocess.PIPE)
    Lines(proc.stdout).until("ready ")
    job = [os.path.join(sandbox.path, d) for d in os.listdir(sandbox.path) if d.startswith("reaper.")][0]
    # An administrator moves the job's processes out and removes its cgroup.
    with open(os.path.join(job, "cgroup.procs")) as f:
        pids = f.read().split()
    for pid in pids:
        with open(os.path.join(sandbox.path, "cgroup.procs"), "w") as f:
            f.write(pid)
    os.rmdir(job)
    # A removed cgroup's cgroup.events polls readable for ever: once anything wakes
    # reaper (here a SIGCHLD, which only makes it look for exited children), it
    # must stop watching that file, not spin on it.  Counted in read(2) calls (the
    # loop reads the file each time round) while the job idles: a spinning
    # supervisor makes thousands in half a second even on a loaded machine.
    reads = _reads(proc.pid)
    proc.send_signal(signal.SIGCHLD)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.5)      # the window measured; the job stays until signalled
    assert _reads(proc.pid) - reads < 100, "reaper spins on the removed cgroup's cgroup.events"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM   # reaper dies of the TERM it forwarded (cli.exit_like_the_job)
    sandbox.assert_empty()
