"""Shared by tests/systemd/: tests that need systemd as PID 1 (the systemd lane: lanes/systemd/run).

They run as root (the lane starts them from a transient service) and drive
the real manager: the shipped template systemd/reaper@.service is installed
as a runtime unit (/run/systemd/system, or the user manager's
$XDG_RUNTIME_DIR/systemd/user), with one drop-in that points PYTHONPATH at
this checkout, so the units run the code under test through the installed
/opt/reaper-venv/bin/reaper.  Everything a test installs, starts or creates
is stopped and removed afterwards; a unit still running or a process still
carrying the test's marker fails the test.

Elsewhere every test here skips, with the reason (`pytestmark = NEEDS_SYSTEMD`).
(A module, not a conftest.py: a second conftest would shadow tests/conftest.py,
which these tests import from.)
"""

import os
import pwd
import shutil
import subprocess
import sys
import time
import uuid

import pytest

import conftest
from conftest import HELPERS, ROOT, usable_by_others

REAPER = "/opt/reaper-venv/bin/reaper"
PYTHON = sys.executable
TEMPLATE = os.path.join(ROOT, "systemd", "reaper@.service")
USER_TEMPLATE = os.path.join(ROOT, "systemd", "user", "reaper@.service")
LANE_USER = os.environ.get("LANE_USER", "lane")


def _why_not():
    try:
        with open("/proc/1/comm") as f:
            if f.read().strip() != "systemd":
                return "systemd is not PID 1 here (run lanes/systemd/run)"
    except OSError:
        return "/proc/1/comm is unreadable"
    if not os.path.isdir("/run/systemd/system"):
        return "/run/systemd/system does not exist"
    if os.geteuid() != 0:
        return "these tests install units: run as root (the systemd lane does)"
    if not os.path.exists(REAPER):
        return f"{REAPER} is not installed (sh scripts/install.sh)"
    if not shutil.which("systemctl"):
        return "systemctl is missing"
    return None


WHY_NOT = _why_not()


NEEDS_SYSTEMD = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


def run(*argv, check=True, timeout=60, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    result = subprocess.run(list(argv), timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} -> {result.returncode}: {result.stdout}{result.stderr}")
    return result


def show(unit, *props, user=None):
    result = run(*systemctl(user), "show", unit, "-p", ",".join(props))
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def systemctl(user=None):
    return ["systemctl", "--no-ask-password"] + (["--user", f"--machine={user}@"] if user else [])


def wait_until(predicate, timeout_s=30.0, what="condition"):
    """Poll (bounded): systemd's state changes have no event a test can block on without D-Bus."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def journal(unit, since):
    return run("journalctl", "--no-pager", "-o", "cat", "-u", unit, "--since", since, check=False).stdout


def cgroup_pids(control_group):
    """Every pid in a unit's cgroup subtree (the kernel's view), [] if it is gone."""
    from reaper import cgroup
    mount = cgroup.find_mount()[0]
    pids = []
    for root, _, files in os.walk(mount + control_group):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(root, "cgroup.procs")) as f:
                    pids += [int(x) for x in f.read().split()]
            except OSError:
                pass
    return pids


def marked_processes(marker):
    return conftest.marked_processes("REAPER_TEST_MARKER", marker)


class Units:
    """reaper@NAME units of the system manager (or a user's), made and removed by one test."""

    def __init__(self, user=None):
        self.user = user
        self.marker = uuid.uuid4().hex[:12]
        self.names = []
        self.files = []
        if user:
            pw = pwd.getpwnam(user)
            self.uid = pw.pw_uid
            self.unit_dir = f"/run/user/{pw.pw_uid}/systemd/user"
            self.conf_dir = os.path.join(pw.pw_dir, ".config", "reaper")
            template = USER_TEMPLATE
        else:
            self.uid = 0
            self.unit_dir = "/run/systemd/system"
            self.conf_dir = "/etc/reaper"
            template = TEMPLATE
        self.since = time.strftime("%Y-%m-%d %H:%M:%S")
        self._install(os.path.join(self.unit_dir, "reaper@.service"), open(template).read())
        self._install(os.path.join(self.unit_dir, "reaper@.service.d", "lane-checkout.conf"),
                      "[Service]\n"
                      f"Environment=PYTHONPATH={ROOT} REAPER_TEST_MARKER={self.marker} PYTHONDONTWRITEBYTECODE=1\n"
                      "Restart=no\n")
        self.reload()

    def _install(self, path, text):
        created = []
        d = os.path.dirname(path)
        while not os.path.isdir(d):
            created.append(d)
            d = os.path.dirname(d)
        for d in reversed(created):
            os.mkdir(d)
            if self.user:
                os.chown(d, self.uid, self.uid)
            self.files.append(d)
        with open(path, "w") as f:
            f.write(text)
        if self.user:
            os.chown(path, self.uid, self.uid)
        self.files.append(path)

    def reload(self):
        run(*systemctl(self.user), "daemon-reload")

    def add(self, name, command, options=None, dropin=None):
        """reaper@NAME with COMMAND (and REAPER_OPTIONS); returns the unit's name."""
        name = f"{name}-{self.marker[:6]}"
        conf = f"COMMAND={command}\n"
        if options is not None:
            conf += f"REAPER_OPTIONS={options}\n"
        self._install(os.path.join(self.conf_dir, f"{name}.conf"), conf)
        unit = f"reaper@{name}.service"
        if dropin:
            self._install(os.path.join(self.unit_dir, f"{unit}.d", "test.conf"), "[Service]\n" + dropin)
            self.reload()
        self.names.append(unit)
        return unit

    def ctl(self, *args, check=True, timeout=60):
        return run(*systemctl(self.user), *args, check=check, timeout=timeout)

    def show(self, unit, *props):
        return show(unit, *props, user=self.user)

    def cleanup(self):
        for unit in self.names:
            self.ctl("stop", unit, check=False)
            self.ctl("reset-failed", unit, check=False)
        for path in reversed(self.files):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.unlink(path)
        self.reload()
        left = marked_processes(self.marker)
        for pid in left:
            os.kill(pid, 9)
        return left


@pytest.fixture
def units():
    u = Units()
    yield u
    assert not u.cleanup(), "processes of the test's units outlived them"


@pytest.fixture
def user_units():
    try:
        pw = pwd.getpwnam(LANE_USER)
    except KeyError:
        pytest.skip(f"no user {LANE_USER!r} (set LANE_USER)")
    if run("systemctl", "is-active", f"user@{pw.pw_uid}.service", check=False).stdout.strip() != "active":
        pytest.skip(f"user@{pw.pw_uid}.service is not running (loginctl enable-linger {LANE_USER})")
    if not usable_by_others(ROOT) or not usable_by_others(PYTHON):
        pytest.skip(f"{ROOT} or {PYTHON} is not usable by {LANE_USER}")
    u = Units(user=LANE_USER)
    yield u
    assert not u.cleanup(), "processes of the test's units outlived them"


def helper_cmd(name, *args):
    return " ".join([PYTHON, os.path.join(HELPERS, name), *args])


def transient(*argv, user=None, env=(), props=(), unit=None, timeout=90):
    """Run argv as a transient service (not delegated) and wait: (exit code, stdout, stderr)."""
    cmd = ["systemd-run", "--quiet", "--wait", "--pipe", "--collect", "--no-ask-password",
           "-E", f"PYTHONPATH={ROOT}", "-E", "PYTHONDONTWRITEBYTECODE=1"]
    if unit:
        cmd += [f"--unit={unit}"]
    if user:
        cmd += ["-p", f"User={user}"]
    for e in env:
        cmd += ["-E", e]
    for p in props:
        cmd += ["-p", p]
    result = subprocess.run(cmd + list(argv), capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return result.returncode, result.stdout, result.stderr


def reaper_lines(err):
    return [line for line in err.decode(errors="replace").splitlines() if line.startswith("reaper: ")]
