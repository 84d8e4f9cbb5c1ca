"""Where reaper puts job cgroups under a real systemd, and what it does when systemd will not help.

reaper runs in contexts systemd made: a transient service without
Delegate= (root), a login session (`runuser -l`, pam_systemd), a service
with User=.  What is checked is the kernel's view: /proc/PID/cgroup of the
job, and which cgroups exist under the unit reaper started in.
"""

import os
import pwd
import socket
import subprocess
import uuid

import pytest

from harness import (LANE_USER, NEEDS_SYSTEMD, PYTHON, ROOT, marked_processes, reaper_lines, run, transient,
                     usable_by_others, wait_until)

pytestmark = [NEEDS_SYSTEMD, pytest.mark.timeout(120)]

REAPER = [PYTHON, "-m", "reaper"]


def job_cgroup(out):
    return [line[3:] for line in out.decode().splitlines() if line.startswith("0::")][-1]


def test_root_in_a_service_without_delegation_gets_a_transient_scope_and_writes_nothing_there():
    service = f"reaper-nodelegate-{uuid.uuid4().hex[:6]}.service"
    script = f"ls -d /sys/fs/cgroup/system.slice/{service}/*/ 2>/dev/null; cat /proc/self/cgroup"
    code, out, err = transient(*REAPER, "exec", "-v", "--name", "nd", "--", "sh", "-c", script, unit=service)
    assert code == 0, err
    lines = reaper_lines(err)
    assert any(f"job cgroups: new transient scope: {service} is systemd's and not delegated "
               "(Delegate=no per the system manager); reaper moved itself into reaper-nd-" in line
               for line in lines), lines
    assert job_cgroup(out).startswith("/system.slice/reaper-nd-")
    assert "/sys/fs/cgroup/system.slice/" + service not in out.decode(), "a cgroup inside the service"


def test_doctor_in_a_service_without_delegation_names_the_path_and_why():
    code, out, err = transient(*REAPER, "doctor")
    assert code == 0, err
    report = out.decode()
    assert "systemd:           yes; run-" in report and "not delegated (Delegate=no per the system manager)" in report
    assert "exec path:         new transient scope (" in report


def test_doctor_in_a_delegated_service_says_who_delegated_it():
    code, out, err = transient(*REAPER, "doctor", props=["Delegate=yes"])
    assert code == 0, err
    report = out.decode()
    assert ": delegated (" in report and ("trusted.delegate=1" in report or "user.delegate=1" in report)
    assert "exec path:         own delegated cgroup (" in report


def lane_user():
    try:
        pw = pwd.getpwnam(LANE_USER)
    except KeyError:
        pytest.skip(f"no user {LANE_USER!r} (set LANE_USER)")
    if not usable_by_others(ROOT):
        pytest.skip(f"{ROOT} is not usable by {LANE_USER}")
    return pw


def test_unprivileged_user_in_a_login_session_gets_a_scope_from_their_user_manager():
    pw = lane_user()
    command = f"env PYTHONPATH={ROOT} {PYTHON} -m reaper exec -v --name login -- cat /proc/self/cgroup"
    code, out, err = transient("runuser", "-l", LANE_USER, "-c", command)
    assert code == 0, err
    lines = reaper_lines(err)
    assert any("job cgroups: new transient scope: session-" in line and "from the user manager" in line
               for line in lines), lines
    assert any(line.startswith("reaper: containment: cgroup: ") for line in lines), lines
    assert f"/user@{pw.pw_uid}.service/app.slice/reaper-login-" in job_cgroup(out)


# -- faults: one line under -v, the fallback, the documented exit code, nothing left -----------

def fault(*options, env=(), user=None, job=("sh", "-c", "cat /proc/self/cgroup; exit 7")):
    marker = uuid.uuid4().hex[:12]
    code, out, err = transient(*REAPER, "exec", *options, "--", *job, user=user,
                               env=list(env) + [f"REAPER_TEST_MARKER={marker}"])
    assert not marked_processes(marker), "the job outlived reaper"
    return code, out, err


def fallback_line(err):
    lines = [line for line in reaper_lines(err) if line.startswith("reaper: containment: ")]
    assert len(lines) == 1, reaper_lines(err)
    return lines[0]


def test_bus_down_falls_back_with_one_line():
    code, out, err = fault("-v", env=["DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/no-such-bus"])
    assert code == 7, err
    line = fallback_line(err)
    assert line.startswith("reaper: containment: pgroup: subreaper + process group, because cannot tell whether "
                           "run-") and "cannot reach the system manager: $DBUS_SYSTEM_BUS_ADDRESS" in line, line


def test_bus_down_with_containment_cgroup_is_one_line_and_125():
    code, _, err = fault("--containment", "cgroup", env=["DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/no-such-bus"])
    assert code == 125
    assert reaper_lines(err) == [err.decode().strip()] and "cannot reach the system manager" in err.decode()


def test_a_bus_that_never_answers_falls_back_within_the_bound(tmp_path):
    path = f"/run/reaper-test-mute-{uuid.uuid4().hex[:6]}.sock"
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(path)
    mute.listen(8)         # never accepts: connect succeeds, nothing ever answers
    try:
        code, _, err = fault("-v", env=[f"DBUS_SYSTEM_BUS_ADDRESS=unix:path={path}"])
    finally:
        mute.close()
        os.unlink(path)
    assert code == 7, err
    assert "no answer within 5s" in fallback_line(err)


def test_a_manager_that_refuses_the_scope_falls_back():
    lane_user()
    # An unprivileged user's request sent to the system manager: refused (polkit / access denied).
    code, _, err = fault("-v", user=LANE_USER, env=["DBUS_SESSION_BUS_ADDRESS=unix:path=/run/dbus/system_bus_socket"])
    assert code == 7, err
    line = fallback_line(err)
    assert "gave no scope: StartTransientUnit: " in line, line


def test_missing_xdg_runtime_dir_falls_back():
    lane_user()
    code, _, err = fault("-v", user=LANE_USER)     # a system service with User=: no session, no XDG_RUNTIME_DIR
    assert code == 7, err
    assert "neither DBUS_SESSION_BUS_ADDRESS nor XDG_RUNTIME_DIR is set" in fallback_line(err)


def test_a_scope_name_that_exists_gets_another_name():
    tag = uuid.uuid4().hex[:6]
    # reaper is PID 1 of a new pid namespace, so its scope would be reaper-clash<tag>-1.scope: take that first.
    holder = subprocess.Popen(["systemd-run", "--quiet", "--scope", "--collect", f"--unit=reaper-clash{tag}-1",
                               "sleep", "300"], stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: run("systemctl", "is-active", f"reaper-clash{tag}-1.scope", check=False)
                   .stdout.strip() == "active", what="the scope that takes the name")
        code, out, err = transient("unshare", "--pid", "--fork", "--mount-proc", *REAPER, "exec", "-v",
                                   "--name", f"clash{tag}", "--", "cat", "/proc/self/cgroup")
    finally:
        holder.kill()       # our own child, by pid
        holder.wait(timeout=30)
    assert code == 0, err
    lines = reaper_lines(err)
    assert sum(f"a unit named reaper-clash{tag}-1.scope exists already; asking for reaper-clash{tag}-1-" in line
               for line in lines) == 1, lines
    assert f"/reaper-clash{tag}-1-" in job_cgroup(out)

