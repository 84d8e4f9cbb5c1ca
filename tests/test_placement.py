"""Where job cgroups go, on any machine: the cases that need no systemd.

- A process whose cgroup lies outside its cgroup namespace (`0::/..`, as after a
  bare `nsenter` into a container): reaper says so and falls back to the
  process tree, and doctor does not mistake a directory above the mount for
  the root cgroup.
- `--cgroup-parent` in the form /proc/self/cgroup and systemd print
  (relative to the hierarchy's root), next to the forms under the mount.
- A parent reaper may write but cannot move its job into (the common
  ancestor's cgroup.procs is not writable): `auto` falls back with the
  reason, `--containment cgroup` fails naming the ancestor.
- Where no systemd runs (/run/systemd/system absent), `reaper exec` imports
  nothing of the systemd support.
The systemd side is in tests/systemd/ (run by the systemd lane).
"""

import os
import subprocess
import sys

import pytest

from conftest import NOBODY, Lines, helper

pytestmark = pytest.mark.timeout(60)
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (unshare --cgroup, moving processes, "
                                                          "chown of cgroups)")


def hierarchy_path(directory):
    """The path of a cgroup directory as /proc/self/cgroup prints it (mount root '/')."""
    from reaper import cgroup
    mount, root, _, _ = cgroup.find_mount()
    rel = os.path.relpath(directory, mount)
    return (root.rstrip("/") + "/" + rel).replace("//", "/")


def start_outside_own_namespace(sandbox, *reaper_args):
    """reaper in the test cgroup, but in a cgroup namespace rooted at a child of it: /proc/self/cgroup reads 0::/..

    The namespace is made while the process sits in `inner`; then this test
    (in the initial namespace: a process inside may not move itself out)
    moves it back up, and lets it exec reaper.
    """
    inner = os.path.join(sandbox.path, "ns-root")
    os.mkdir(inner)
    script = 'echo $$ > "$0/cgroup.procs" && exec unshare --cgroup sh -c \'echo in-namespace; read go; exec "$@"\' sh "$@"'
    proc = sandbox.spawn(["sh", "-c", script, inner, sys.executable, "-m", "reaper", *reaper_args],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, inner


def release(sandbox, proc):
    # unshare execs sh in place, so proc.pid is the process to move; it says
    # `in-namespace` once the namespace exists, then waits for a line.
    assert Lines(proc.stdout).next() == "in-namespace"
    with open(os.path.join(sandbox.path, "cgroup.procs"), "w") as f:
        f.write(str(proc.pid))
    proc.stdin.write(b"go\n")
    proc.stdin.flush()


@pytest.fixture
def outside(sandbox):
    made = []

    def run(*reaper_args):
        proc, inner = start_outside_own_namespace(sandbox, *reaper_args)
        made.append(inner)
        release(sandbox, proc)
        proc.stdin.close()
        proc.stdin = None
        out, err = proc.communicate(timeout=45)
        return proc.returncode, out, err
    yield run
    for inner in made:
        os.rmdir(inner)


@NEEDS_ROOT
def test_own_cgroup_outside_the_namespace_falls_back_and_says_why(sandbox, outside):
    code, out, err = outside("exec", "-v", "--grace", "300ms", "--", *helper("escape.py"), "2",
                             "--ignore-term", "--exit", "3")
    assert code == 3, err
    assert b"containment: pgroup: subreaper + process group, because own cgroup /.. lies outside " \
           b"this process's cgroup namespace" in err
    assert out.count(b"daemon ") == 2
    sandbox.assert_empty()


@NEEDS_ROOT
def test_doctor_outside_the_namespace_reports_it_and_no_false_root(sandbox, outside):
    code, out, err = outside("doctor")
    assert code == 0, err
    report = out.decode()
    assert "own cgroup:        /.. (outside this process's cgroup namespace)" in report
    assert "/sys (the root cgroup)" not in report and "/sys/kernel" not in report
    assert "exec path:         process-group fallback (own cgroup /.. lies outside" in report


def test_cgroup_parent_in_the_form_systemd_prints(sandbox):
    form = hierarchy_path(sandbox.path)
    code, out, err = sandbox.run("exec", "-v", "--cgroup-parent", form, "--", "cat", "/proc/self/cgroup")
    assert code == 0, err
    assert f"containment: cgroup: {sandbox.path}/reaper.".encode() in err
    assert f"0::{form}/reaper.".encode() in out
    sandbox.assert_empty()


def test_cgroup_parent_that_is_no_cgroup_at_all_is_refused(sandbox):
    code, _, err = sandbox.run("exec", "--cgroup-parent", "/no-such.slice/x", "--", "true")
    assert code == 125
    assert err == b"reaper: cgroup parent /no-such.slice/x is neither under the cgroup2 mount " + \
        cgroup_mount().encode() + b" nor an existing cgroup of its hierarchy\n"


def cgroup_mount():
    from reaper import cgroup
    return cgroup.find_mount()[0]


def delegate_to_nobody(path):
    for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
        os.chown(os.path.join(path, name), 65534, 65534)


def run_as_nobody_in(sandbox, world, cgroup_dir, *args):
    """reaper as nobody, started inside `cgroup_dir` (joined as root before setpriv)."""
    def join():
        with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as f:
            f.write("0")
    env = dict(sandbox.env, PYTHONPATH=world, HOME="/")
    proc = sandbox.spawn(NOBODY + [sys.executable, "-m", "reaper", *args], preexec=join, env=env, cwd=world,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=45)
    return proc.returncode, out, err


@pytest.fixture
def two_delegated_siblings(sandbox):
    """home/ (where reaper runs) and other/, both nobody's; their common ancestor stays root's."""
    dirs = [os.path.join(sandbox.path, name) for name in ("home", "other")]
    for d in dirs:
        os.mkdir(d)
        delegate_to_nobody(d)
    yield dirs
    for d in dirs:
        os.rmdir(d)


@NEEDS_ROOT
def test_unreachable_parent_falls_back_in_auto_naming_the_ancestor(sandbox, world, two_delegated_siblings):
    home, other = two_delegated_siblings
    code, out, err = run_as_nobody_in(sandbox, world, home, "exec", "-v", "--cgroup-parent", other, "--",
                                      sys.executable, os.path.join(world, "helpers", "escape.py"), "1",
                                      "--exit", "4")
    assert code == 4, err
    assert (f"containment: pgroup: subreaper + process group, because cannot move the job from {home} "
            f"into {other}: their common ancestor {sandbox.path} is in the way").encode() in err
    sandbox.assert_empty()


@NEEDS_ROOT
def test_unreachable_parent_with_containment_cgroup_is_one_line_and_125(sandbox, world, two_delegated_siblings):
    home, other = two_delegated_siblings
    code, _, err = run_as_nobody_in(sandbox, world, home, "exec", "--containment", "cgroup",
                                    "--cgroup-parent", other, "--", "true")
    assert code == 125
    assert err.startswith(b"reaper: --containment cgroup: cannot move the job from ") and err.count(b"\n") == 1
    assert f"their common ancestor {sandbox.path} is in the way".encode() in err


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="systemd runs here (tests/systemd covers it)")
def test_no_systemd_costs_no_import_and_keeps_todays_placement(sandbox):
    code, _, err = sandbox.run("exec", "-v", "--", "true", env=dict(sandbox.env, PYTHONPROFILEIMPORTTIME="1"))
    assert code == 0, err
    imported = {line.split("|")[-1].strip() for line in err.decode().splitlines() if line.startswith("import time:")}
    assert "reaper.delegation" not in imported     # one stat(2) said no systemd runs
    assert not {"reaper.systemd", "reaper.notify", "jeepney", "socket"} & imported
    assert f"containment: cgroup: {sandbox.path}/reaper.".encode() in err
    assert b"job cgroups:" not in err      # no systemd, no transient scope, no leaf
    from reaper import containment, delegation
    assert containment.SYSTEMD_BOOTED == delegation.BOOTED


def test_doctor_without_systemd_says_so(sandbox):
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd runs here (tests/systemd covers it)")
    code, out, err = sandbox.run("doctor")
    assert code == 0, err
    assert b"systemd:           no (/run/systemd/system does not exist)" in out
    assert b"exec path:         own cgroup (no systemd runs: /run/systemd/system does not exist)" in out
