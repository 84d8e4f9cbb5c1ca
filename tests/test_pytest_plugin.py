"""The pytest plugin (reaper.pytest): a test that leaks a daemon fails with its command line.

Each scenario runs a real pytest in a subprocess, inside this test's cgroup,
on a small test file: one test double-forks a TERM-ignoring daemon that calls
setsid() (a process group kill misses it), one is clean, one leaks but is
marked to allow it.  The inner run must fail exactly the leaking test, name
the daemon's command line, pass the others, and leave nothing: read from the
kernel (this test's cgroup) once it has exited.
"""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.timeout(120)

INNER = '''
import os, signal, subprocess, sys, time
import pytest

DAEMON = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"

def daemonize(tag):
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.close(r)
            os.execv(sys.executable, [sys.executable, "-c", DAEMON + "  # " + tag])
        os._exit(0)
    os.close(w)
    os.wait()
    os.read(r, 1)       # EOF once the daemon has exec'd (w is close-on-exec)
    os.close(r)

def test_leaks_a_daemon():
    daemonize("leaked-by-test")

def test_clean():
    assert subprocess.run(["sh", "-c", "exit 0"]).returncode == 0

@pytest.mark.reaper_allow_leftovers
def test_allowed_to_leak():
    daemonize("allowed-leftover")

def test_api_jobs_are_not_leaks():
    import reaper
    assert reaper.run(["true"]).returncode == 0

KEEP = []

def test_z_leaves_an_api_job_running():
    import reaper
    KEEP.append(reaper.Job(["sleep", "301"]))
'''


def _entry_point_installed():
    """Is the pytest11 entry point visible already (an installed process-reaper, or the
    egg-info an in-tree `pip install .` leaves in the checkout)?  pytest then loads it by
    itself, and naming it again with -p would register it twice."""
    from importlib.metadata import entry_points
    return any(ep.value == "reaper.pytest_entry" for ep in entry_points(group="pytest11"))


def run_inner(sandbox, *args, env_extra=None):
    if _entry_point_installed():
        args = [a for i, a in enumerate(args) if not (a == "-p" and args[i + 1:i + 2] == ("reaper.pytest_entry",))
                and not (a == "reaper.pytest_entry" and args[i - 1] == "-p")]
    test_file = sandbox.tmp / "test_inner.py"
    test_file.write_text(INNER)
    # TMPDIR: what the inner run's fork server leaves in a temporary directory
    # stays in this test's own.
    env = dict(sandbox.env, TMPDIR=str(sandbox.tmp), **(env_extra or {}))
    proc = sandbox.spawn([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA",
                          *args, str(test_file)], env=env, cwd=str(sandbox.tmp),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=100)
    return proc.returncode, out.decode(errors="replace")


def check(code, out):
    assert code == 1, out
    assert "2 errors" in out and "5 passed" in out, out
    assert "ERROR test_inner.py::test_leaks_a_daemon" in out, out
    assert "leaked-by-test" in out, out                 # the daemon's command line
    assert "reaper: this test left 1 process(es) running" in out, out
    assert "ERROR test_inner.py::test_z_leaves_an_api_job_running" in out, out
    assert "sleep 301" in out, out


@pytest.mark.parametrize("how", [["-p", "reaper.pytest"], ["-p", "reaper.pytest_entry", "--reaper"]])
def test_leaking_test_fails_with_the_command_line_in_a_cgroup(sandbox, how):
    code, out = run_inner(sandbox, *how)
    check(code, out)
    assert "reaper: each test in its own cgroup" in out, out
    sandbox.assert_empty()


def test_leaking_test_fails_without_a_cgroup_too(sandbox):
    code, out = run_inner(sandbox, "-p", "reaper.pytest", env_extra={"REAPER_PYTEST_NO_CGROUP": "1"})
    check(code, out)
    assert "as a process tree below pytest (a subreaper)" in out, out
    sandbox.assert_empty()


def test_the_entry_point_is_inert_until_asked(sandbox):
    code, out = run_inner(sandbox, "-p", "reaper.pytest_entry")
    assert code == 0, out
    assert "reaper:" not in out and "5 passed" in out, out
    sandbox.kill_all()      # nothing collected the daemons: this run is the negative control


def test_pyproject_declares_the_entry_point():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        text = f.read()
    assert '[project.entry-points.pytest11]\nreaper = "reaper.pytest_entry"' in text
