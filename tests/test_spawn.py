"""spawn(): the job's first process is born in its cgroup, by either clone3 path; pidfds; PATH search.

clone3(CLONE_INTO_CGROUP) is reached through reaper's C extension
(reaper/_linux.c) or, where it is missing or REAPER_CLONE3_CTYPES is set,
through ctypes.  Both are run here for real: the extension is compiled once
per session into a copy of the package (as an install would), the checkout
itself (PYTHONPATH) has none, and the switch forces ctypes.  Birth in the
cgroup is proved by giving spawn() only the cgroup's directory and no
cgroup.procs: a child that was forked instead would stay in the parent's
cgroup.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig

import pytest

from conftest import HELPERS, ROOT

SPAWNER = os.path.join(HELPERS, "spawner.py")


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """A copy of the package with reaper._linux compiled next to it."""
    include = sysconfig.get_paths()["include"]
    if shutil.which("gcc") is None or not os.path.exists(os.path.join(include, "Python.h")):
        pytest.skip("needs gcc and the Python headers (apt-get install gcc python3-dev)")
    base = tmp_path_factory.mktemp("built")
    shutil.copytree(os.path.join(ROOT, "reaper"), base / "reaper",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    target = base / "reaper" / ("_linux" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", f"-I{include}",
                    str(base / "reaper" / "_linux.c"), "-o", str(target)],
                   check=True, timeout=120)
    return str(base)


def run_spawner(sandbox, spec, pythonpath=None, **env):
    environ = dict(sandbox.env, **env)
    if pythonpath:
        environ["PYTHONPATH"] = pythonpath
    proc = sandbox.spawn([sys.executable, SPAWNER, json.dumps(spec)], env=environ,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


@pytest.fixture
def job(sandbox):
    path = os.path.join(sandbox.path, "job")
    os.mkdir(path)
    yield path
    os.rmdir(path)


def cgroup_of_job(tmp_path):
    with open(tmp_path / "cgroup") as f:
        return f.read().strip()


@pytest.mark.parametrize("want_pidfd", [False, True], ids=["pid", "pidfd"])
@pytest.mark.parametrize("backend", ["extension", "ctypes"])
def test_the_job_is_born_in_its_cgroup(sandbox, built, job, tmp_path, backend, want_pidfd):
    out_file = tmp_path / "cgroup"
    env = {"REAPER_CLONE3_CTYPES": "1"} if backend == "ctypes" else {}
    r = run_spawner(sandbox, {"argv": ["sh", "-c", f"grep ^0:: /proc/self/cgroup > {out_file}"],
                              "job": job, "procs": False, "pidfd": want_pidfd},
                    pythonpath=built, **env)
    assert r["backend"] == backend
    assert r["status"] == 0
    assert cgroup_of_job(tmp_path).endswith(f"/{os.path.basename(sandbox.path)}/job")
    # The extension path never loads ctypes; the fallback does.
    assert r["ctypes_loaded"] == (backend == "ctypes")
    if want_pidfd:
        assert isinstance(r["pidfd"], int) and r["pidfd"] >= 0
        assert r["pidfd_inheritable"] is False
        assert r["pidfd_readable"] is True
    else:
        assert r["pidfd"] is None


def test_without_the_extension_ctypes_is_used(sandbox, job, tmp_path):
    r = run_spawner(sandbox, {"argv": ["sh", "-c", f"grep ^0:: /proc/self/cgroup > {tmp_path / 'cgroup'}"],
                              "job": job, "procs": False, "pidfd": True}, pythonpath=None)
    if os.path.exists(os.path.join(ROOT, "reaper", "_linux" + sysconfig.get_config_var("EXT_SUFFIX"))):
        pytest.skip("the checkout has a built extension (build_ext --inplace)")
    assert r["backend"] == "ctypes"
    assert r["status"] == 0 and r["pidfd_readable"] is True
    assert cgroup_of_job(tmp_path).endswith("/job")


def test_the_fork_fallback_joins_before_exec_and_still_gives_a_pidfd(sandbox, built, job, tmp_path):
    r = run_spawner(sandbox, {"argv": ["sh", "-c", f"grep ^0:: /proc/self/cgroup > {tmp_path / 'cgroup'}"],
                              "job": job, "procs": True, "pidfd": True},
                    pythonpath=built, REAPER_NO_CLONE3="1")
    assert r["backend"] is None
    assert r["status"] == 0
    assert r["pidfd"] >= 0 and r["pidfd_readable"] is True and r["pidfd_inheritable"] is False
    assert cgroup_of_job(tmp_path).endswith("/job")


@pytest.mark.parametrize("into_cgroup", [True, False], ids=["cgroup", "pgroup"])
def test_the_extension_runs_no_python_in_the_child(sandbox, built, job, tmp_path, into_cgroup):
    """reaper._linux.spawn (CLONE_VM | CLONE_VFORK): no at-fork hook runs in the child, and the
    child's set-up is the Python child's: own session, reset signals at default, other ignored
    signals still ignored (nohup), nothing blocked."""
    out, hook = tmp_path / "status", tmp_path / "hook"
    spec = {"argv": ["sh", "-c", f"cat /proc/self/stat /proc/self/status /proc/self/cgroup > {out}"],
            "pidfd": True,
            "job": job if into_cgroup else None, "hook_file": str(hook),
            "ignore": [signal.SIGPIPE, signal.SIGUSR2], "reset": [signal.SIGPIPE]}
    r = run_spawner(sandbox, spec, pythonpath=built)
    assert r["status"] == 0, r
    assert not hook.exists()
    text = out.read_text()
    first = text.splitlines()[0]        # cat's /proc/self/stat
    stat = first[first.rfind(")") + 2:].split()
    assert int(stat[3]) == r["pid"]     # session: the job's own
    fields = dict(line.split(":\t") for line in text.splitlines()[1:] if ":\t" in line)
    ignored = int(fields["SigIgn"], 16)
    assert ignored & (1 << (signal.SIGUSR2 - 1)) and not ignored & (1 << (signal.SIGPIPE - 1))
    assert int(fields["SigBlk"], 16) == 0
    v2 = [line for line in text.splitlines() if line.startswith("0::")]
    assert v2[0].endswith(f"/{os.path.basename(sandbox.path)}/job") == into_cgroup
    # The Python child (the fork fallback) does run the hook: the test can tell them apart.
    r = run_spawner(sandbox, dict(spec, job=None), pythonpath=built, REAPER_NO_CLONE3="1")
    assert r["status"] == 0 and hook.exists()


def test_path_search_follows_execvp(sandbox, tmp_path):
    """A non-executable match is skipped for a later executable one; else 126; none: 127."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "prog").write_text("#!/bin/sh\nexit 3\n")
    (first / "prog").chmod(0o644)
    (second / "prog").write_text("#!/bin/sh\nexit 7\n")
    (second / "prog").chmod(0o755)
    r = run_spawner(sandbox, {"argv": ["prog"], "pidfd": False, "path": f"{tmp_path}/none:{first}:{second}"})
    assert r.get("status") == 7, r
    r = run_spawner(sandbox, {"argv": ["prog"], "pidfd": False, "path": f"{first}:{tmp_path}/none"})
    assert r["code"] == 126 and "cannot execute" in r["error"], r
    r = run_spawner(sandbox, {"argv": ["prog"], "pidfd": False, "path": f"{tmp_path}/none"})
    assert r["code"] == 127 and "command not found" in r["error"], r
    r = run_spawner(sandbox, {"argv": [""], "pidfd": True})
    assert r["code"] == 127, r
