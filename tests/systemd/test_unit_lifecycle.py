"""The shipped template reaper@.service under a real systemd: start, stop, restart, failures, notify, reload.

Each test installs its own instance (see harness.Units) and checks the
manager's view (`systemctl show`) and the kernel's (the unit's cgroup).
"""

import os
import signal
import time

import pytest

from harness import NEEDS_SYSTEMD, cgroup_pids, helper_cmd, journal, run, wait_until
from harness import units, user_units  # noqa: F401  (fixtures)

pytestmark = [NEEDS_SYSTEMD, pytest.mark.timeout(120)]


def job_cgroup_pids(u, unit):
    group = u.show(unit, "ControlGroup")["ControlGroup"]
    return [p for p in cgroup_pids(group) if p != int(u.show(unit, "MainPID")["MainPID"])]


def test_stop_collects_a_term_ignoring_daemon_before_systemds_sigkill_and_ends_inactive(units):
    unit = units.add("stop", helper_cmd("escape.py", "1", "--ignore-term", "--stay"), "-v --notify-ready --grace 1s")
    units.ctl("start", unit)
    state = units.show(unit, "ActiveState", "ControlGroup", "MainPID")
    assert state["ActiveState"] == "active"
    pids = wait_until(lambda: len(job_cgroup_pids(units, unit)) >= 2 and job_cgroup_pids(units, unit),
                      what="the job and its daemon")
    group = state["ControlGroup"]
    assert os.path.isdir(f"/sys/fs/cgroup{group}/supervisor"), "reaper sits in a leaf of its own"
    started = time.monotonic()
    units.ctl("stop", unit)
    took = time.monotonic() - started
    after = units.show(unit, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    assert (after["ActiveState"], after["Result"]) == ("inactive", "success"), after
    assert took < 15, f"stop took {took:.1f}s: systemd's TimeoutStopSec=30s would have been reaper's backstop"
    assert not any(os.path.exists(f"/proc/{p}") for p in pids)
    log = journal(unit, units.since)
    assert "killing: the grace period of 1s is over" in log
    assert "timed out" not in log and "Killing process" not in log, log


def test_restart_replaces_the_whole_job(units):
    unit = units.add("restart", helper_cmd("escape.py", "1", "--stay"), "--notify-ready --grace 1s")
    units.ctl("start", unit)
    first = wait_until(lambda: len(job_cgroup_pids(units, unit)) >= 2 and job_cgroup_pids(units, unit),
                       what="the job and its daemon")
    main = units.show(unit, "MainPID")["MainPID"]
    units.ctl("restart", unit)
    assert units.show(unit, "ActiveState")["ActiveState"] == "active"
    assert units.show(unit, "MainPID")["MainPID"] != main
    assert not any(os.path.exists(f"/proc/{p}") for p in first)


@pytest.mark.parametrize("status, state, result", [(0, "inactive", "success"), (3, "failed", "exit-code")])
def test_main_exiting_by_itself_gives_its_status_to_systemd(units, status, state, result):
    unit = units.add(f"exit{status}", helper_cmd("escape.py", "1", "--exit", str(status)),
                     "--notify-ready --grace 1s")
    units.ctl("start", unit, check=False)
    wait_until(lambda: units.show(unit, "ActiveState")["ActiveState"] in ("inactive", "failed"),
               what="the unit to end")
    after = units.show(unit, "ActiveState", "Result", "ExecMainStatus", "ControlGroup")
    assert (after["ActiveState"], after["Result"], after["ExecMainStatus"]) == (state, result, str(status))


def test_job_killed_by_a_signal_reaper_did_not_send_leaves_the_unit_failed_with_143(units):
    unit = units.add("killed", "/bin/sleep 1000", "--notify-ready --grace 1s")
    units.ctl("start", unit)
    job = wait_until(lambda: job_cgroup_pids(units, unit), what="the job")[0]
    os.kill(job, signal.SIGTERM)       # not through systemd or reaper: an unexpected death
    wait_until(lambda: units.show(unit, "ActiveState")["ActiveState"] == "failed", what="failed")
    after = units.show(unit, "Result", "ExecMainCode", "ExecMainStatus")
    assert (after["Result"], after["ExecMainStatus"]) == ("exit-code", "143"), after


def test_sigkilled_reaper_is_backstopped_by_systemd(units):
    unit = units.add("sigkill", helper_cmd("escape.py", "1", "--ignore-term", "--stay"), "--notify-ready")
    units.ctl("start", unit)
    pids = wait_until(lambda: len(job_cgroup_pids(units, unit)) >= 2 and job_cgroup_pids(units, unit),
                      what="the job and its daemon")
    group = units.show(unit, "ControlGroup")["ControlGroup"]
    started = time.monotonic()
    units.ctl("kill", "--kill-who=main", "--signal=SIGKILL", unit)
    wait_until(lambda: units.show(unit, "ActiveState")["ActiveState"] == "failed", 45, "failed")
    took = time.monotonic() - started
    assert units.show(unit, "Result")["Result"] == "signal"
    assert not cgroup_pids(group) and not any(os.path.exists(f"/proc/{p}") for p in pids)
    print(f"systemd's backstop emptied the unit {took:.1f}s after reaper's SIGKILL")


def test_notify_from_the_job_is_relayed_without_the_ready_option(units):
    unit = units.add("relay", helper_cmd("notify_send.py", "STATUS=hello", "READY=1", "@stay"), "-v --grace 1s")
    units.ctl("start", unit, timeout=60)
    after = units.show(unit, "ActiveState", "StatusText", "NotifyAccess", "MainPID")
    assert (after["ActiveState"], after["StatusText"], after["NotifyAccess"]) == ("active", "hello", "main")


def test_without_the_ready_option_a_silent_job_times_out_and_leaves_nothing(units):
    # The negative control: READY=1 really is what starts the unit.
    unit = units.add("silent", "/bin/sleep 1000", "--grace 1s", dropin="TimeoutStartSec=2s\n")
    units.ctl("start", unit, check=False)
    after = units.show(unit, "ActiveState", "Result", "ControlGroup")
    assert (after["ActiveState"], after["Result"]) == ("failed", "timeout"), after


def test_bad_notify_datagrams_are_dropped_with_one_line_each_and_the_unit_starts(units):
    unit = units.add("bad", helper_cmd("notify_send.py", "@oversized", "@nul", "READY=1", "@stay"), "-v --grace 1s")
    units.ctl("start", unit, timeout=60)
    assert units.show(unit, "ActiveState")["ActiveState"] == "active"
    log = journal(unit, units.since)
    assert log.count("reaper: notify: dropped a datagram") == 2, log


def test_a_notify_socket_path_too_long_falls_back_to_an_abstract_socket(units, tmp_path):
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    unit = units.add("longpath", helper_cmd("notify_send.py", "READY=1", "@stay"), "-v --grace 1s",
                     dropin=f"Environment=XDG_RUNTIME_DIR={deep}\n")
    units.ctl("start", unit, timeout=60)
    assert units.show(unit, "ActiveState")["ActiveState"] == "active"
    assert journal(unit, units.since).count("using an abstract socket") == 1


def test_reload_reaches_the_job(units, tmp_path):
    out = tmp_path / "signals.log"
    unit = units.add("reload", helper_cmd("signals.py"), "--notify-ready --grace 1s",
                     dropin=f"StandardOutput=append:{out}\n")
    units.ctl("start", unit)
    wait_until(lambda: out.exists() and "ready" in out.read_text(), what="the job's ready line")
    units.ctl("reload", unit)
    wait_until(lambda: "got HUP" in out.read_text(), what="HUP at the job")
    assert units.show(unit, "ActiveState")["ActiveState"] == "active"


def test_per_job_controllers_inside_a_unit(units):
    unit = units.add("controllers", "/bin/sleep 1000", "--notify-ready --grace 1s")
    units.ctl("start", unit)
    group = "/sys/fs/cgroup" + units.show(unit, "ControlGroup")["ControlGroup"]
    with open(os.path.join(group, "cgroup.controllers")) as f:
        available = f.read().split()
    if not available:
        pytest.skip("no controllers reach this unit (nspawn on a host that binds them to cgroup v1: "
                    "the VM lane has them)")
    with open(os.path.join(group, "cgroup.subtree_control")) as f:
        assert f.read().split() == available
    job = [d for d in os.listdir(group) if d.startswith("reaper.")][0]
    with open(os.path.join(group, job, "cgroup.controllers")) as f:
        assert f.read().split() == available, "the job's cgroup has the unit's controllers"


def systemd_version():
    return int(run("systemctl", "--version").stdout.split()[1])


def test_delegate_subgroup_puts_reaper_in_its_leaf_and_jobs_beside_it(units):
    """systemd >= 254 starts reaper in supervisor/ itself; reaper then moves nothing and
    makes job cgroups beside it (the README's recipe for per-job controllers)."""
    version = systemd_version()
    if version < 254:
        pytest.skip(f"DelegateSubgroup= needs systemd >= 254, this is {version} "
                    "(the lane's second image has it: LANE_SYSTEMD_FROM=bookworm-backports)")
    unit = units.add("subgroup", "/bin/sleep 1000", "-v --notify-ready --grace 1s",
                     dropin="DelegateSubgroup=supervisor\n")
    units.ctl("start", unit)
    state = units.show(unit, "ControlGroup", "MainPID")
    group, main = state["ControlGroup"], int(state["MainPID"])
    with open(f"/proc/{main}/cgroup") as f:     # the v2 line (the host's v1 ones show too)
        assert f"0::{group}/supervisor" in f.read().splitlines(), "systemd put reaper in the leaf"
    unit_dir = "/sys/fs/cgroup" + group
    jobs = [d for d in os.listdir(unit_dir) if d.startswith("reaper.")]
    assert len(jobs) == 1, os.listdir(unit_dir)
    with open(os.path.join(unit_dir, "supervisor", "cgroup.procs")) as f:
        assert f.read().split() == [str(main)], "the leaf holds reaper alone"
    with open(os.path.join(unit_dir, "cgroup.controllers")) as f:
        available = f.read().split()
    with open(os.path.join(unit_dir, jobs[0], "cgroup.controllers")) as f:
        assert f.read().split() == available, "the job's cgroup has the unit's controllers"
    log = journal(unit, units.since)
    assert "reaper is in its supervisor/ leaf" in log, log
    units.ctl("stop", unit)
    after = units.show(unit, "ActiveState", "Result")
    assert (after["ActiveState"], after["Result"]) == ("inactive", "success")


def test_an_unprivileged_users_unit_gets_cgroup_containment(user_units):
    unit = user_units.add("mine", helper_cmd("escape.py", "1", "--stay"), "-v --notify-ready --grace 1s")
    user_units.ctl("start", unit)
    state = user_units.show(unit, "ActiveState", "ControlGroup")
    assert state["ActiveState"] == "active"
    group = "/sys/fs/cgroup" + state["ControlGroup"]
    assert [d for d in os.listdir(group) if d.startswith("reaper.")], "a job cgroup beside supervisor/"
    log = journal_user(user_units, unit)
    assert "job cgroups: own delegated cgroup" in log and "Delegate=yes per the user manager" in log, log
    user_units.ctl("stop", unit)
    after = user_units.show(unit, "ActiveState", "Result")
    assert (after["ActiveState"], after["Result"]) == ("inactive", "success")


def journal_user(u, unit):
    return run("journalctl", "--no-pager", "-o", "cat", f"_UID={u.uid}", "--since", u.since, check=False).stdout \
        + run("journalctl", "--no-pager", "-o", "cat", f"USER_UNIT={unit}", "--since", u.since, check=False).stdout

