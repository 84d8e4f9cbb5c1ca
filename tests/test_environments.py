"""Every environment: container PID 1, read-only cgroupfs, unprivileged users, reaper's death.

Containers are built from the kernel's own pieces, no Docker daemon needed:
`unshare --pid --fork --mount-proc` makes reaper PID 1 of a pid namespace, and
a private mount namespace remounts the cgroup2 mount read-only.  Unprivileged
runs drop to `nobody` with setpriv, with and without a delegated cgroup (a
test cgroup chowned to nobody, as systemd's Delegate= does).
"""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import NOBODY, Lines, cg_wait_empty, helper, require, zombie_children

pytestmark = pytest.mark.timeout(60)

def cgroup_mount():
    from reaper import cgroup
    return cgroup.find_mount()[0]


def container(*argv, read_only_cgroup=False):
    """argv run as PID 1 of a new pid namespace (and mount namespace)."""
    prefix = ["unshare", "--pid", "--fork", "--mount-proc", "--propagation", "private"]
    require(*prefix, "true")
    if not read_only_cgroup:
        return prefix + list(argv)
    script = f'mount -o remount,bind,ro "{cgroup_mount()}" && exec "$@"'
    return prefix + ["sh", "-c", script, "sh", *argv]


def reaper_argv(*args):
    return [sys.executable, "-m", "reaper", *args]


def pid1_of(unshare_proc):
    """Host pid of the namespace's PID 1 (the child of `unshare --fork`)."""
    return psutil.Process(unshare_proc.pid).children()[0]


# -- container entrypoint -------------------------------------------------

def test_pid1_collects_escaped_daemons_and_exits_with_the_job_status(sandbox, mode):
    proc = sandbox.spawn(container(*reaper_argv("exec", "--containment", mode, "--grace", "300ms", "--",
                                                *helper("escape.py"), "2", "--ignore-term", "--exit", "3")),
                         stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert out.count(b"daemon ") == 2
    sandbox.assert_empty()


def test_pid1_forwards_docker_stop_term_to_the_job(sandbox, mode):
    proc = sandbox.spawn(container(*reaper_argv("exec", "--containment", mode, "--",
                                                *helper("signals.py"), "--stop-exit", "42")),
                         stdout=subprocess.PIPE)
    lines = Lines(proc.stdout)
    lines.until("ready ")
    pid1_of(proc).send_signal(signal.SIGTERM)      # what `docker stop` does
    assert lines.until("got ") == "got TERM"
    assert proc.wait(timeout=30) == 42
    sandbox.assert_empty()


def test_pid1_reaps_orphans_that_entered_the_namespace_from_outside(sandbox):
    proc = sandbox.spawn(container(*reaper_argv("exec", "--containment", "cgroup", "--",
                                                *helper("signals.py"), "--stop-exit", "0")),
                         stdout=subprocess.PIPE)
    Lines(proc.stdout).until("ready ")
    init = pid1_of(proc)
    # Like `docker exec`: a process joins the namespace from outside and
    # leaves an orphan, which the kernel hands to the namespace's PID 1.
    entered = sandbox.spawn(["nsenter", "--target", str(init.pid), "--pid", "--",
                             "sh", "-c", "sleep 1000 >/dev/null & echo $!"], stdout=subprocess.PIPE)
    orphan_ns_pid = int(entered.communicate(timeout=10)[0])
    assert orphan_ns_pid > 1
    orphan = [c for c in init.children() if c.name() == "sleep"][0]
    orphan.kill()
    psutil.wait_procs([orphan], timeout=10)
    assert _no_zombie_soon(init)
    init.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    sandbox.assert_empty()


def test_pid1_takes_a_stop_signal_that_waited_blocked_since_before_python_started(sandbox):
    """What scripts/reaper-entrypoint.c arranges for a container's PID 1.

    It blocks the stop signals before it execs the launcher, so a `docker
    stop` right after `docker run` waits instead of being discarded by the
    kernel.  reaper.early must then take it and unblock: TERM sent the moment
    PID 1 exists still stops the job (the job may not have its own handler
    yet: 143, or 42 if it has), and the job inherits no blocked signal.
    """
    block = lambda: signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])   # noqa: E731
    proc = sandbox.spawn(container(*reaper_argv("exec", "--", *helper("signals.py"), "--stop-exit", "42")),
                         stdout=subprocess.PIPE, preexec=block)
    deadline = time.monotonic() + 10
    while not psutil.Process(proc.pid).children():
        assert time.monotonic() < deadline, "unshare never forked PID 1"
        time.sleep(0.001)       # no event tells that unshare has forked
    pid1_of(proc).send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) in (42, 143)
    sandbox.assert_empty()


def test_pid1_unblocks_what_the_entrypoint_blocked_before_the_job_starts(sandbox):
    block = lambda: signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGHUP])   # noqa: E731
    proc = sandbox.spawn(container(*reaper_argv("exec", "--", *helper("signals.py"), "--stop-exit", "42")),
                         stdout=subprocess.PIPE, preexec=block)
    lines = Lines(proc.stdout)
    lines.until("ready ")           # the job prints its pid in the namespace, not ours
    [job] = [c.pid for c in pid1_of(proc).children() if c.status() != psutil.STATUS_ZOMBIE]
    with open(f"/proc/{job}/status") as f:
        blocked = int([x for x in f if x.startswith("SigBlk:")][0].split()[1], 16)
    assert blocked == 0, f"the job inherited blocked signals: {blocked:#x}"
    pid1_of(proc).send_signal(signal.SIGHUP)
    assert lines.until("got ") == "got HUP"
    pid1_of(proc).send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 42
    sandbox.assert_empty()


def test_pid1_without_a_cgroup_gives_entered_processes_term_and_the_grace(sandbox):
    """`docker exec` processes have a parent outside the namespace: no wait reports them.

    Without a cgroup the job is the whole namespace, so reaper as PID 1 must
    not return (and let the kernel SIGKILL the namespace) while one of them
    is still using the grace it was given.
    """
    release = sandbox.tmp / "release"
    os.mkfifo(release)
    proc = sandbox.spawn(container(*reaper_argv("exec", "-v", "--containment", "pgroup", "--grace", "60s", "--",
                                                *helper("signals.py"), "--stop-exit", "0")),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    Lines(proc.stdout).until("ready ")
    init = pid1_of(proc)
    entered = sandbox.spawn(["nsenter", "--target", str(init.pid), "--pid", "--",
                             *helper("entered.py"), str(release)], stdout=subprocess.PIPE)
    out = Lines(entered.stdout)
    out.until("ready ")
    init.send_signal(signal.SIGTERM)
    assert out.until("got TERM ")
    err = Lines(proc.stderr)
    while True:
        line = err.next()
        assert line is not None, f"reaper exited before the entered process did: {err.seen}"
        if "waiting for the rest of the job" in line:
            break
    # The main process is gone and reaped; the entered process is still shutting down.
    assert proc.poll() is None
    with open(release, "w") as f:
        f.write("done")
    assert entered.wait(timeout=30) == 0, "the entered process was killed, not left to finish"
    assert proc.wait(timeout=30) == 0
    sandbox.assert_empty()


def _no_zombie_soon(proc, timeout_s=5.0):
    """Poll (bounded): no event tells an outsider that a zombie was reaped."""
    import time
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not zombie_children(proc):
            return True
        time.sleep(0.01)
    return False


def test_read_only_cgroupfs_falls_back_to_pgroup_and_says_why(sandbox):
    proc = sandbox.spawn(container(*reaper_argv("exec", "-v", "--grace", "300ms", "--",
                                                *helper("escape.py"), "2", "--ignore-term", "--exit", "5"),
                                   read_only_cgroup=True),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 5
    assert b"containment: pgroup: subreaper + process group, because the cgroup2 mount" in err
    assert b"read-only" in err
    sandbox.assert_empty()


def test_read_only_cgroupfs_with_containment_cgroup_exits_125(sandbox):
    proc = sandbox.spawn(container(*reaper_argv("exec", "--containment", "cgroup", "--", "true"),
                                   read_only_cgroup=True),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 125
    assert err.startswith(b"reaper: --containment cgroup: ") and err.count(b"\n") == 1


# -- unprivileged users ---------------------------------------------------

def run_as_nobody(sandbox, world, *args, preexec=None):
    env = dict(sandbox.env, PYTHONPATH=world, HOME="/")
    argv = NOBODY + [sys.executable, "-m", "reaper", *args]
    proc = sandbox.spawn(argv, env=env, cwd=world, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=45)
    return proc.returncode, out, err


def nobody_helper(world, name):
    return [sys.executable, os.path.join(world, "helpers", name)]


def delegate_to_nobody(path):
    """What systemd's Delegate= does: hand the directory and its control files over."""
    for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
        os.chown(os.path.join(path, name), 65534, 65534)


def test_nobody_without_a_delegated_cgroup_falls_back_to_pgroup(sandbox, world):
    code, out, err = run_as_nobody(sandbox, world, "exec", "-v", "--grace", "300ms", "--",
                                   *nobody_helper(world, "escape.py"), "2", "--ignore-term", "--exit", "3")
    assert code == 3, err
    assert b"containment: pgroup: subreaper + process group, because" in err
    assert b"not writable by uid 65534" in err
    assert out.count(b"daemon ") == 2
    sandbox.assert_empty()


def test_nobody_asking_for_cgroup_without_one_exits_125(sandbox, world):
    code, _, err = run_as_nobody(sandbox, world, "exec", "--containment", "cgroup", "--", "true")
    assert code == 125
    assert err.startswith(b"reaper: --containment cgroup: ") and err.count(b"\n") == 1


def test_nobody_with_a_delegated_cgroup_uses_it(sandbox, world):
    delegate_to_nobody(sandbox.path)
    code, out, err = run_as_nobody(sandbox, world, "exec", "-v", "--grace", "300ms", "--",
                                   *nobody_helper(world, "escape.py"), "2", "--ignore-term", "--exit", "3")
    assert code == 3, err
    assert f"containment: cgroup: {sandbox.path}/reaper.".encode() in err
    sandbox.assert_empty()
    assert not [d for d in os.listdir(sandbox.path) if os.path.isdir(os.path.join(sandbox.path, d))]


def test_nobody_pidns_uses_a_user_namespace(sandbox, world):
    require(*NOBODY, "unshare", "--user", "--map-root-user", "--pid", "--fork", "true")
    code, out, err = run_as_nobody(sandbox, world, "exec", "--pidns", "--", "sh", "-c", "echo $$")
    assert code == 0, err
    assert out.strip() == b"2"     # PID 1 is reaper's init, the command comes next
    sandbox.assert_empty()


# -- reaper's own death ---------------------------------------------------

def start_doomed_job(sandbox, *options):
    proc = sandbox.reaper("exec", *options, "--", *helper("escape.py"), "2", "--ignore-term", "--stay",
                          stdout=subprocess.PIPE)
    lines = Lines(proc.stdout)
    daemons = [int(lines.until("daemon ").split()[1]) for _ in range(2)]
    lines.until("ready ")
    return proc, daemons


def job_dirs(sandbox):
    return [d for d in os.listdir(sandbox.path) if os.path.isdir(os.path.join(sandbox.path, d))]


def test_pidns_job_dies_with_a_sigkilled_reaper(sandbox):
    proc, _ = start_doomed_job(sandbox, "--pidns")     # (its pids are the namespace's own)
    proc.kill()
    proc.wait(timeout=10)
    # The init's PDEATHSIG takes the namespace down: everything goes at once.
    assert cg_wait_empty(sandbox.path, timeout_s=5)
    code, out, _ = sandbox.run("gc", "--cgroup-parent", sandbox.path)
    assert code == 0 and out.startswith(b"removed ")
    assert job_dirs(sandbox) == []


def test_gc_collects_a_job_whose_reaper_was_sigkilled(sandbox):
    proc, pids = start_doomed_job(sandbox, "--containment", "cgroup")
    daemons = [psutil.Process(pid) for pid in pids]
    proc.kill()
    proc.wait(timeout=10)
    assert all(d.is_running() for d in daemons), "escaped daemons outlive a SIGKILLed reaper"
    code, out, err = sandbox.run("gc", "--cgroup-parent", sandbox.path)
    assert code == 0, err
    assert out.decode().startswith(f"removed {sandbox.path}/reaper.{proc.pid}.")
    psutil.wait_procs(daemons, timeout=5)
    sandbox.assert_empty()
    assert job_dirs(sandbox) == []


def test_next_exec_collects_stale_jobs_under_its_parent(sandbox):
    proc, pids = start_doomed_job(sandbox, "--containment", "cgroup")
    daemons = [psutil.Process(pid) for pid in pids]
    proc.kill()
    proc.wait(timeout=10)
    code, _, err = sandbox.run("exec", "--", "true")
    assert code == 0, err
    psutil.wait_procs(daemons, timeout=5)
    sandbox.assert_empty()
    assert job_dirs(sandbox) == []


def test_gc_leaves_a_live_job_alone(sandbox):
    proc = sandbox.reaper("exec", "--containment", "cgroup", "--", *helper("signals.py"), "--stop-exit", "0",
                          stdout=subprocess.PIPE)
    Lines(proc.stdout).until("ready ")
    code, out, _ = sandbox.run("gc", "--cgroup-parent", sandbox.path)
    assert (code, out) == (0, b"")
    assert len(job_dirs(sandbox)) == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
