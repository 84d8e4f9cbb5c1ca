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
EXAMPLE_CONF = os.path.join(ROOT, "systemd", "reaper", "example.conf")


def service_section(path):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(path)
    return parser["Service"]


def environment(service):
    """Environment= defaults, then the example EnvironmentFile, as systemd would combine them."""
    env = {}
    for word in shlex.split(service.get("Environment", "")):
        key, _, value = word.partition("=")
        env[key] = value
    with open(EXAMPLE_CONF) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key] = value
    return env


def expand(command, env):
    """ExecStart's $VAR words, split at whitespace (systemd.service(5), "Command lines")."""
    argv = []
    for word in shlex.split(command):
        if word.startswith("$") and word[1:] in env:
            argv += env[word[1:]].split()
        else:
            argv.append(word.replace("%i", "example"))
    return argv


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: os.path.relpath(p, ROOT))
def test_unit_delegates_stops_cleanly_and_runs_a_valid_reaper_command(unit):
    service = service_section(unit)
    assert service["Delegate"] == "yes"
    assert service["KillMode"] == "mixed"
    assert (service["Type"], service["NotifyAccess"]) == ("notify", "main")
    assert "-HUP $MAINPID" in service["ExecReload"]
    argv = expand(service["ExecStart"], environment(service))
    assert argv[0].endswith("/reaper") and argv[1] == "exec"
    opts, command = parse_exec(argv[2:])
    assert command == ["/usr/bin/python3", "-m", "http.server", "8080"]
    assert opts["notify_ready"]
    timeout_stop = float(service["TimeoutStopSec"].rstrip("s"))
    assert timeout_stop > opts["grace"], "systemd's SIGKILL must come after reaper's own"


@pytest.mark.timeout(60)
@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: os.path.relpath(p, ROOT))
def test_systemd_accepts_the_unit(unit, tmp_path):
    # A template is verified through an instance: a link named reaper@example.service.
    instance = tmp_path / os.path.basename(unit).replace("@.", "@example.")
    instance.symlink_to(unit)
    # (--user would need a user manager's runtime directory; the syntax is the same)
    result = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Unknown key" not in result.stderr and "Unknown lvalue" not in result.stderr, result.stderr
