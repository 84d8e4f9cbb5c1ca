"""`reaper doctor`: its report agrees with the kernel's own view.

Every expectation is read independently here (the cgroup2 line of
/proc/self/mountinfo, the `0::` line of /proc/self/cgroup, the files of the
test cgroup), never through reaper's helpers, and doctor runs as a real
`python -m reaper doctor` process.  Runs that go through the `sandbox` fixture
happen inside a test cgroup, so the fixture also proves that doctor's
namespace probes leave no process behind and that it creates no cgroup.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import NOBODY, ROOT

pytestmark = pytest.mark.timeout(30)

KEYS = {
    "user", "uid", "euid", "root", "cap_sys_admin", "pid", "pid1", "kernel",
    "cgroup2_mount", "cgroup_layout", "cgroup2_read_only", "own_cgroup",
    "cgroup_parent", "cgroup_parent_is_root", "cgroup_parent_writable",
    "cgroup_kill", "cgroup_kill_where", "cgroup_kill_detail", "cgroup_kill_disabled",
    "cgroup_freeze", "cgroup_freeze_where", "cgroup_freeze_detail", "cgroup_controllers",
    "subreaper", "subreaper_detail", "pidfd", "pidfd_detail",
    "max_user_namespaces", "unprivileged_userns_clone",
    "user_namespaces", "user_namespaces_detail", "pid_namespaces", "pid_namespaces_detail",
    "auto_containment", "auto_problem", "auto_reason", "stop_method",
    "own_cgroup_outside_namespace", "systemd", "systemd_unit", "delegated", "delegated_by",
    "exec_path", "exec_path_reason", "proc_usable", "job_sees_reaper",
}
DOCTOR = [sys.executable, "-m", "reaper", "doctor"]


def kernel_mount():
    """(mount point, read-only, v1 mounted too) of the last cgroup2 line in mountinfo."""
    found, ro, v1 = None, False, False
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype = right.split(" ", 1)[0]
            v1 = v1 or fstype == "cgroup"
            if fstype == "cgroup2":
                fields = left.split()
                found = fields[4].replace("\\040", " ")
                ro = "ro" in fields[5].split(",")
    return found, ro, v1


def kernel_own_cgroup(pid="self"):
    with open(f"/proc/{pid}/cgroup") as f:
        return next(line[3:].rstrip("\n") for line in f if line.startswith("0::"))


def clean_env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT, **extra)
    if "REAPER_NO_CGROUP_KILL" not in extra:
        env.pop("REAPER_NO_CGROUP_KILL", None)
    return env


def doctor_here(*args, env=None):
    """Run doctor in the test process's own cgroup; return (pid, returncode, stdout)."""
    proc = subprocess.Popen(DOCTOR + list(args), env=env or clean_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert err == ""
    return proc.pid, out


def doctor_in(sandbox, *args, env=None, argv=None, cwd=None):
    """Run doctor in the sandbox's test cgroup; return its parsed JSON (or text)."""
    proc = sandbox.spawn((argv or []) + DOCTOR + list(args), env=env or sandbox.env, cwd=cwd,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert err == ""
    return json.loads(out) if "--json" in args else out


def in_hierarchy(path, mount):
    return "/" + os.path.relpath(path, mount).lstrip(".")


def test_json_matches_the_kernels_view_of_this_process():
    pid, out = doctor_here("--json")
    info = json.loads(out)
    assert set(info) == KEYS
    mount, ro, v1 = kernel_mount()
    assert info["cgroup2_mount"] == mount
    assert info["cgroup2_read_only"] == ro
    assert info["cgroup_layout"] == ("none" if mount is None else "hybrid" if v1 else "unified")
    # doctor's child was not moved: it sits where the test process sits
    assert info["own_cgroup"] == kernel_own_cgroup()
    assert info["pid"] == pid and info["pid1"] is False
    assert info["euid"] == os.geteuid() and info["root"] == (os.geteuid() == 0)
    assert info["subreaper"] is True
    assert info["pidfd"] is True
    assert info["cgroup_kill_disabled"] is False
    assert info["proc_usable"] is True and info["job_sees_reaper"] is True
    if mount is None:
        assert info["auto_containment"] == "pgroup"
        return
    parent = os.path.normpath(mount + "/" + info["own_cgroup"])
    if info["systemd"] and os.path.basename(parent) == "supervisor" and info["delegated"]:
        parent = os.path.dirname(parent)    # reaper's leaf in a delegated unit: jobs go beside it
    assert info["cgroup_parent"] == parent
    with open(os.path.join(parent, "cgroup.controllers")) as f:
        assert info["cgroup_controllers"] == f.read().split()
    is_root = not os.path.exists(os.path.join(parent, "cgroup.events"))
    assert info["cgroup_parent_is_root"] == is_root
    assert info["cgroup_kill_where"] == ("child cgroups" if is_root else "parent")
    if not is_root:
        assert info["cgroup_kill"] == os.path.exists(os.path.join(parent, "cgroup.kill"))
    if os.geteuid() == 0 and not ro:
        assert info["cgroup_parent_writable"] is True
        assert info["auto_containment"] == "cgroup"
        assert info["auto_problem"] is None
        stop = "cgroup.kill" if info["cgroup_kill"] else "freeze, signal, thaw"
        assert info["stop_method"] == stop
        assert info["auto_reason"] == f"{parent} is writable; stop by {stop}"


def test_in_a_child_cgroup_the_parents_own_files_decide(sandbox):
    info = doctor_in(sandbox, "--json")
    mount, _, _ = kernel_mount()
    assert info["own_cgroup"] == in_hierarchy(sandbox.path, mount)
    assert info["cgroup_parent"] == sandbox.path
    assert info["cgroup_parent_is_root"] is False
    has_kill = os.path.exists(os.path.join(sandbox.path, "cgroup.kill"))
    assert (info["cgroup_kill"], info["cgroup_kill_where"]) == (has_kill, "parent")
    assert info["cgroup_freeze"] == os.path.exists(os.path.join(sandbox.path, "cgroup.freeze"))
    assert info["auto_containment"] == "cgroup"
    assert info["stop_method"] == ("cgroup.kill" if has_kill else "freeze, signal, thaw")
    assert info["auto_reason"] == f"{sandbox.path} is writable; stop by {info['stop_method']}"
    # the sandbox fixture then fails the test if a probe child or a cgroup was left behind


@pytest.mark.parametrize("where", ["own cgroup", "test cgroup"])
def test_no_cgroup_kill_switch_reports_the_freeze_fallback(request, where):
    if where == "own cgroup":
        info = json.loads(doctor_here("--json", env=clean_env(REAPER_NO_CGROUP_KILL="1"))[1])
    else:
        sandbox = request.getfixturevalue("sandbox")
        info = doctor_in(sandbox, "--json", env=dict(sandbox.env, REAPER_NO_CGROUP_KILL="1"))
    assert info["cgroup_kill_disabled"] is True
    if info["auto_containment"] != "cgroup":
        pytest.skip(f"auto does not pick cgroup here: {info['auto_problem']}")
    assert info["stop_method"] == "freeze, signal, thaw"
    assert info["auto_reason"].endswith("; stop by freeze, signal, thaw")


def test_as_nobody_the_parent_is_not_writable_and_auto_picks_pgroup(sandbox, world):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop to nobody")
    env = dict(sandbox.env, PYTHONPATH=world, HOME="/")
    trial = subprocess.run(NOBODY + [sys.executable, "-c", "import _prctl, reaper.doctor"],
                           env=env, cwd=world, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=20)
    if trial.returncode != 0:
        pytest.skip(f"nobody cannot run {sys.executable} with reaper: {trial.stderr.strip()}")
    info = doctor_in(sandbox, "--json", env=env, argv=NOBODY, cwd=world)
    nobody_uid = int(subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True,
                                    timeout=10).stdout)
    assert info["euid"] == nobody_uid and info["root"] is False
    assert info["cap_sys_admin"] is False
    mount, _, _ = kernel_mount()
    assert info["own_cgroup"] == in_hierarchy(sandbox.path, mount)
    assert info["cgroup_parent"] == sandbox.path
    assert info["cgroup_parent_writable"] is False
    assert info["auto_containment"] == "pgroup"
    assert info["auto_problem"] == f"{sandbox.path} is not writable by uid {nobody_uid}"
    assert info["auto_reason"] == f"subreaper + process group, because {info['auto_problem']}"
    assert info["subreaper"] is True


def test_plain_output_is_aligned_and_ends_with_the_verdict():
    _, out = doctor_here()
    lines = out.splitlines()
    assert len(lines) > 10
    columns = set()
    for line in lines:
        key, sep, rest = line.partition(":")
        assert sep and key and rest.startswith(" ") and rest.strip(), line
        columns.add(len(line) - len(rest.lstrip(" ")))
    assert len(columns) == 1, f"values are not aligned:\n{out}"
    assert lines[-1].startswith("auto containment:")
    mount, _, _ = kernel_mount()
    assert "cgroup2 mount:" in out and (mount or "none") in out
    verdict = json.loads(doctor_here("--json")[1])
    assert lines[-1].split(None, 2)[2] == f"{verdict['auto_containment']} ({verdict['auto_reason']})"
