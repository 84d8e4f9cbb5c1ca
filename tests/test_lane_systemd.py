"""The systemd lane as one test: lanes/systemd/run boots Debian 12 with systemd
as PID 1 on pure cgroup v2 (systemd-nspawn), installs reaper from this checkout
inside and runs the suite there from a transient service, from an unprivileged
user's manager, and tests/systemd/.  Then tests/systemd/ alone once more on
a second image with systemd from bookworm-backports (>= 254), for what only
newer systemd has (DelegateSubgroup=).  Minutes, root; deselect with -m "not lane".
"""

import os
import shutil
import subprocess

import pytest

from conftest import ROOT

LANE = os.path.join(ROOT, "lanes", "systemd", "run")
BOUND = 1200         # LANE_TIMEOUT: the lane's own bound, in seconds


def why_not():
    if os.geteuid() != 0:
        return "the systemd lane needs root (debootstrap, systemd-nspawn)"
    if not (shutil.which("debootstrap") and shutil.which("systemd-nspawn")) and not shutil.which("apt-get"):
        return "no debootstrap and systemd-nspawn, and no apt-get to install them"
    return None


def run_lane(**extra):
    why = why_not()
    if why:
        pytest.skip(why)
    env = dict(os.environ, CHECKOUT=ROOT, LANE_TIMEOUT=str(BOUND))
    for name in ("LANE_PYTEST_ARGS", "LANE_PARTS", "LANE_SYSTEMD_FROM"):
        env.pop(name, None)
    env.update(extra)
    # The lane bounds itself (timeout BOUND, then KILL 60 s later) and cleans
    # up on its way out; this bound only backs that up.
    proc = subprocess.run([LANE], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=BOUND + 150)
    code = proc.returncode
    tail = "\n".join(proc.stdout.decode(errors="replace").splitlines()[-80:])
    assert code == 0, f"lanes/systemd/run exited {code}; its last lines:\n{tail}"


@pytest.mark.lane
@pytest.mark.timeout(BOUND + 180)
def test_systemd_lane():
    run_lane()


@pytest.mark.lane
@pytest.mark.timeout(BOUND + 180)
def test_systemd_lane_with_systemd_from_backports():
    run_lane(LANE_SYSTEMD_FROM="bookworm-backports", LANE_PARTS="c")
