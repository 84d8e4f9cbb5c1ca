"""The shipped systemd units stay valid: systemd parses them, reaper parses their command."""

import configparser
import glob
import os
import shlex
import shutil
import subprocess

import pytest

from conftest import ROOT
from reaper.cli import parse_exec

UNITS = sorted(glob.glob(os.path.join(ROOT, "systemd", "**", "*.service"), recursive=True))


def service_section(path):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(path)
    return parser["Service"]


@pytest.mark.parametrize("unit", UNITS, ids=os.path.basename)
def test_unit_delegates_its_cgroup_and_runs_a_valid_reaper_command(unit):
    service = service_section(unit)
    assert service["Delegate"] == "yes"
    assert service["KillMode"] == "mixed"
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/reaper") and argv[1] == "exec"
    opts, command = parse_exec(argv[2:])
    assert command


@pytest.mark.timeout(60)
@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", UNITS, ids=os.path.basename)
def test_systemd_accepts_the_unit(unit):
    # (--user would need a user manager's runtime directory; the syntax is the same)
    result = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
