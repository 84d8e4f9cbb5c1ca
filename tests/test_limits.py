"""--memory-max, --pids-max, --cpu-max: refused clearly where impossible, enforced where possible.

Enforcement needs the controllers on cgroup v2.  This project's CI host binds
them to cgroup v1, so those tests skip here and run in the VM lane
(`CHECKOUT=... LANE_PYTEST_ARGS="tests/test_limits.py" lanes/vm/run`), which
exports REAPER_TEST_CONTROLLERS with the controllers the harness may use.

cgroup v2 lets a cgroup enable controllers for its children only while it has
no processes of its own (except the root cgroup), so the enforcing tests build
what a delegated service does: the test's cgroup S gets a leaf S/sup for
reaper and a parent S/jobs for job cgroups (`--cgroup-parent`), and reaper
enables the controllers in S/jobs itself.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import Lines, cg_wait_empty

pytestmark = pytest.mark.timeout(90)

CONTROLLERS = set(os.environ.get("REAPER_TEST_CONTROLLERS", "").replace(",", " ").split())


def _write(path, data):
    with open(path, "w") as f:
        f.write(data)


def _read(path):
    with open(path) as f:
        return f.read().split()


# -- refused before the job starts (every host) --------------------------------------

@pytest.mark.parametrize("option, value, message", [
    ("--memory-max", "12X", "--memory-max: invalid size '12X'"),
    ("--memory-max", "-1G", "--memory-max: invalid size '-1G'"),
    ("--memory-max", "1", "--memory-max: invalid size '1'"),
    ("--memory-max", "nan", "--memory-max: invalid size 'nan'"),
    ("--pids-max", "0", "--pids-max: invalid number '0'"),
    ("--pids-max", "1.5", "--pids-max: invalid number '1.5'"),
    ("--pids-max", "9999999", "--pids-max: invalid number '9999999'"),
    ("--cpu-max", "0", "--cpu-max: invalid CPU count '0'"),
    ("--cpu-max", "two", "--cpu-max: invalid CPU count 'two'"),
    ("--cpu-max", "1e9", "--cpu-max: invalid CPU count '1e9'"),
])
def test_bad_limits_are_refused_with_125_before_the_job_starts(sandbox, option, value, message):
    marker = sandbox.tmp / "started"
    code, _, err = sandbox.run("exec", option, value, "--", "touch", str(marker))
    assert code == 125 and err.decode() .startswith(f"reaper: {message}") and err.count(b"\n") == 1
    assert not marker.exists()


def test_limits_refuse_process_group_containment(sandbox):
    code, _, err = sandbox.run("exec", "--containment", "pgroup", "--pids-max", "10", "--", "true")
    assert code == 125 and b"need a job cgroup" in err


def _offered(path, controller):
    return controller in (_read(os.path.join(path, "cgroup.controllers")) or [])


@pytest.mark.parametrize("option, value, controller", [
    ("--memory-max", "100M", "memory"), ("--pids-max", "10", "pids"), ("--cpu-max", "0.5", "cpu")])
def test_a_missing_controller_is_named_with_the_reason(sandbox, option, value, controller):
    if _offered(sandbox.path, controller):
        pytest.skip(f"the {controller} controller is available here")
    marker = sandbox.tmp / "started"
    code, _, err = sandbox.run("exec", option, value, "--", "touch", str(marker))
    err = err.decode()
    assert code == 125 and err.count("\n") == 1, err
    assert f"{option} needs the {controller} controller, which " in err
    assert ("bound to a cgroup v1 hierarchy" in err) or ("not delegated" in err)
    assert not marker.exists()


# -- enforced (VM lane) -------------------------------------------------------------

def needs(*controllers):
    missing = [c for c in controllers if c not in CONTROLLERS]
    return pytest.mark.skipif(bool(missing), reason=f"needs the {', '.join(missing)} controller(s) on "
                              f"cgroup v2 (REAPER_TEST_CONTROLLERS={' '.join(sorted(CONTROLLERS)) or 'unset'}); "
                              f"runs in the VM lane")


class Delegated:
    """S/sup holds reaper, S/jobs is --cgroup-parent; removed at the end."""

    def __init__(self, sandbox, controllers):
        self.sandbox = sandbox
        root = os.path.dirname(sandbox.path)
        wanted = " ".join("+" + c for c in controllers)
        for where in (root, sandbox.path):
            missing = [c for c in controllers if c not in _read(os.path.join(where, "cgroup.controllers"))]
            if missing:
                pytest.skip(f"{where} does not offer {missing}")
            _write(os.path.join(where, "cgroup.subtree_control"), wanted)
        self.sup = os.path.join(sandbox.path, "sup")
        self.jobs = os.path.join(sandbox.path, "jobs")
        os.mkdir(self.sup)
        os.mkdir(self.jobs)

    def reaper(self, *args, **kw):
        """reaper in S/sup.  Not through sandbox.spawn: that joins S first, which
        has controllers enabled for its children now, so it may hold no process."""
        sup = self.sup
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen([sys.executable, "-m", "reaper", *args], env=self.sandbox.env,
                                preexec_fn=lambda: _write(os.path.join(sup, "cgroup.procs"), "0"), **kw)
        self.sandbox.procs.append(proc)
        return proc

    def run(self, *args, timeout=60):
        proc = self.reaper("exec", "--cgroup-parent", self.jobs, *args)
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err.decode()

    def remove(self):
        for path in (self.jobs, self.sup):
            if os.path.isdir(path):
                cg_wait_empty(path)
                for d in os.listdir(path):
                    if os.path.isdir(os.path.join(path, d)):
                        os.rmdir(os.path.join(path, d))
                os.rmdir(path)


@pytest.fixture
def delegated(sandbox, request):
    controllers = request.param
    d = Delegated(sandbox, controllers)
    yield d
    d.remove()


HOG = ("import sys\n"
       "chunks = []\n"
       "print('allocating', flush=True)\n"
       "while True:\n"
       "    chunks.append(bytearray(16 << 20))\n")


@needs("memory")
@pytest.mark.parametrize("delegated", [["memory"]], indirect=True)
def test_a_job_killed_by_the_oom_killer_exits_137_and_the_stats_say_so(delegated, sandbox):
    out = sandbox.tmp / "s.json"
    code, _, err = delegated.run("--memory-max", "64M", "--stats-json", str(out), "--",
                                 sys.executable, "-c", HOG)
    assert code == 137, err
    doc = json.loads(out.read_text())
    assert doc["oom_kills"] >= 1 and doc["oom_kills_source"] == "cgroup"
    assert doc["memory_peak_source"] == "cgroup" and doc["memory_peak_bytes"] <= 64 << 20
    assert doc["ended"] == "killed by SIGKILL"
    sandbox.assert_empty()


BOMB = ("import os, signal, sys\n"
        "made = failed = 0\n"
        "for _ in range(400):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        failed += 1\n"
        "        continue\n"
        "    if pid == 0:\n"
        "        try:\n"
        "            os.fork(); os.setsid()\n"       # every child forks once more and escapes
        "        except OSError:\n"
        "            pass\n"
        "        signal.pause()\n"
        "    made += 1\n"
        "print('made', made, 'failed', failed, flush=True)\n")


@needs("pids")
@pytest.mark.parametrize("delegated", [["pids"]], indirect=True)
def test_a_bounded_fork_bomb_under_pids_max_is_contained_and_collected(delegated, sandbox):
    out = sandbox.tmp / "s.json"
    code, stdout, err = delegated.run("--pids-max", "40", "--grace", "200ms", "--stats-json", str(out), "--",
                                      sys.executable, "-c", BOMB)
    assert code == 0, err
    made, failed = int(stdout.split()[1]), int(stdout.split()[3])
    assert failed > 0 and made < 40
    doc = json.loads(out.read_text())
    assert doc["processes_peak"] <= 40 and doc["processes_peak_source"] == "cgroup"
    assert doc["leftovers_killed"] > 0
    sandbox.assert_empty()


@needs("cpu")
@pytest.mark.parametrize("delegated", [["cpu"]], indirect=True)
def test_cpu_max_is_written_to_the_job_cgroup(delegated, sandbox):
    script = 'cat "$1$(sed -n "s/^0:://p" /proc/self/cgroup)/cpu.max"'
    from reaper import cgroup
    mount = cgroup.find_mount()[0]
    code, out, err = delegated.run("--cpu-max", "1.5", "--", "sh", "-c", script, "sh", mount)
    assert code == 0, err
    assert out.split() == [b"150000", b"100000"]


@needs("memory", "pids")
@pytest.mark.parametrize("delegated", [["memory", "pids"]], indirect=True)
def test_reaper_enables_the_controllers_in_the_parent_it_may_write(delegated, sandbox):
    assert "memory" not in _read(os.path.join(delegated.jobs, "cgroup.subtree_control"))
    code, out, err = delegated.run("--memory-max", "1G", "--pids-max", "100", "--", "sh", "-c",
                                   'cat "$1$(sed -n "s/^0:://p" /proc/self/cgroup)/memory.max"', "sh",
                                   __import__("reaper.cgroup").cgroup.find_mount()[0])
    assert code == 0, err
    assert out.split() == [str(1 << 30).encode()]
    assert {"memory", "pids"} <= set(_read(os.path.join(delegated.jobs, "cgroup.subtree_control")))


@needs("memory")
def test_a_parent_with_processes_of_its_own_is_refused_with_the_remedy(sandbox):
    root = os.path.dirname(sandbox.path)
    if "memory" not in _read(os.path.join(root, "cgroup.controllers")):
        pytest.skip(f"{root} does not offer memory")
    _write(os.path.join(root, "cgroup.subtree_control"), "+memory")
    code, _, err = sandbox.run("exec", "--memory-max", "100M", "--", "true")
    assert code == 125 and b"no-internal-process rule" in err and b"--cgroup-parent" in err
