"""The VM lane (lanes/vm/run) as one test: the suite on pure cgroup v2 with controllers.

The lane builds or reuses its cached machine, boots it under QEMU, runs the
suite inside and exits with the suite's status; this test only runs it and
shows the end of its output when it fails, and what a boot that stalled or hit
its bound was doing (the lane boots once more then, so the run may still pass)
as a warning in pytest's summary. Its bound covers the lane's own:
an image built from nothing (up to 900 s) plus the VM's run (LANE_VM_TIMEOUT,
720 s by default), so a hung lane is ended by the lane itself, which cleans
up, before pytest-timeout would strike.
"""

import os
import shutil
import subprocess
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANE = os.path.join(ROOT, "lanes", "vm", "run")
# image build + two boots (the lane boots once more after a boot that hit its bound) + slack
BOUND_S = 900 + 2 * int(os.environ.get("LANE_VM_TIMEOUT", "720")) + 60

pytestmark = [
    pytest.mark.lane,
    pytest.mark.timeout(BOUND_S + 60),
    pytest.mark.skipif(os.geteuid() != 0, reason="the VM lane needs root (debootstrap, its own cgroup)"),
    pytest.mark.skipif(shutil.which("apt-get") is None, reason="the VM lane installs its tools with apt-get"),
]


def test_suite_passes_in_a_vm_with_pure_cgroup_v2_and_controllers():
    proc = subprocess.run(["bash", LANE], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=BOUND_S, env=dict(os.environ, CHECKOUT=ROOT))
    out = proc.stdout.decode(errors="replace")
    lines = out.splitlines()
    stuck = [i for i, line in enumerate(lines) if "REAPER-LANE-STALL" in line or "hit the bound" in line]
    if stuck:
        warnings.warn("lanes/vm/run: a boot stalled or hit its bound; what it was doing:\n"
                      + "\n".join(lines[stuck[0]:stuck[0] + 300]))
    tail = "\n".join(lines[-80:])
    assert proc.returncode == 0, f"lanes/vm/run exited {proc.returncode}; the end of its output:\n{tail}"
