"""The quick start and a plain `pip install`: what a new user gets, checked on real installs.

scripts/install.sh runs once per session into a world-readable temporary venv
(REAPER_VENV) with its PATH link in a temporary directory (REAPER_BINDIR), so
the machine's /opt/reaper-venv and /usr/local/bin are left alone.  It is skipped
where it would have to apt-get something (the tests install no system
packages).  A second venv gets a plain `pip install <checkout>`.  pip caches the
python-prctl wheel it builds, so the second install compiles only reaper.
"""

import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import NOBODY, ROOT

INSTALL = os.path.join(ROOT, "scripts", "install.sh")
PACKAGES = ["python3-venv", "python3-dev", "gcc", "libcap-dev", "util-linux", "procps"]
# Nothing on the exec path may pull these in (measured costs in bench/RESULTS.md).
HEAVY = ("re", "ctypes", "warnings", "site", "subprocess", "argparse", "psutil", "enum",
         "_prctl")     # prctl comes from reaper._linux where it is built


def _world_dir(prefix):
    path = tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="session")
def quick_start():
    if os.geteuid() != 0:
        pytest.skip("scripts/install.sh is run as root")
    if shutil.which("dpkg") is None or subprocess.run(
            ["dpkg", "-s", *PACKAGES], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
        pytest.skip(f"install.sh would apt-get install {' '.join(PACKAGES)}; the tests install no packages")
    base = _world_dir("reaper-install-")
    venv, bindir = os.path.join(base, "venv"), os.path.join(base, "bin")
    env = dict(os.environ, REAPER_VENV=venv, REAPER_BINDIR=bindir)
    r = subprocess.run(["sh", INSTALL], env=env, cwd="/", stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    try:
        assert r.returncode == 0, r.stdout.decode(errors="replace")[-3000:]
        yield {"venv": venv, "bin": bindir, "output": r.stdout.decode(errors="replace")}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(extra)
    return env


@pytest.mark.timeout(660)
def test_quick_start_puts_reaper_on_path(quick_start):
    path = f"{quick_start['bin']}:/usr/bin:/bin"
    assert shutil.which("reaper", path=path) == os.path.join(quick_start["bin"], "reaper")
    r = subprocess.run(["reaper", "--help"], env=clean_env(PATH=path), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 0, r.stderr
    assert b"usage: reaper exec" in r.stdout
    # No deprecation warning from pip for python-prctl (it is built as a wheel).
    assert "DEPRECATION" not in quick_start["output"], quick_start["output"]


@pytest.mark.timeout(660)
def test_quick_start_builds_the_container_entrypoint(quick_start, sandbox):
    """VENV/bin/reaper-entrypoint (scripts/reaper-entrypoint.c) runs the launcher next to it."""
    entry = os.path.join(quick_start["venv"], "bin", "reaper-entrypoint")
    proc = sandbox.spawn([entry, "exec", "--", "sh", "-c", "exit 7"], env=clean_env(PATH="/usr/bin:/bin"))
    assert proc.wait(timeout=60) == 7
    sandbox.assert_empty()


@pytest.mark.timeout(660)
def test_quick_start_launcher_skips_site_and_uses_the_extension(quick_start, sandbox):
    launcher = os.path.join(quick_start["venv"], "bin", "reaper")
    with open(launcher) as f:
        assert f.readline().strip() == f"#!{quick_start['venv']}/bin/python3 -IS"
    python = os.path.join(quick_start["venv"], "bin", "python3")
    # -X importtime reports every import, the job's child-side ones included
    # (the child is a fork of this interpreter until it execs).
    proc = sandbox.spawn([python, "-X", "importtime", "-IS", launcher, "exec", "--containment",
                          "cgroup", "--", "true"], env=clean_env(PATH="/usr/bin:/bin", REAPER_REGISTRY=sandbox.registry),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    imported = {line.split("|")[-1].strip() for line in err.decode().splitlines() if "import time:" in line}
    assert "reaper._linux" in imported and "reaper.supervisor" in imported
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


@pytest.mark.timeout(660)
def test_the_installed_launcher_works_for_an_unprivileged_user(quick_start, sandbox):
    reaper = os.path.join(quick_start["bin"], "reaper")
    proc = sandbox.spawn(NOBODY + [reaper, "exec", "-v", "--", "sh", "-c", "id -u; sleep 0 & sleep 0 &"],
                         env=clean_env(PATH="/usr/bin:/bin", REAPER_REGISTRY=sandbox.registry),
                         stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd="/")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert out.split() == [b"65534"]
    assert b"reaper: containment:" in err


@pytest.mark.timeout(660)
def test_plain_pip_install_gets_reapers_launcher(quick_start, sandbox):
    base = _world_dir("reaper-pip-")
    try:
        venv = os.path.join(base, "venv")
        subprocess.run(["/usr/bin/python3", "-m", "venv", venv], check=True, timeout=120)
        r = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "--use-pep517",
                            "--disable-pip-version-check", ROOT], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
        assert r.returncode == 0, r.stdout.decode(errors="replace")[-3000:]
        launcher = os.path.join(venv, "bin", "reaper")
        with open(launcher) as f:
            first, text = f.readline().strip(), f.read()
        assert first == f"#!{venv}/bin/python3", first      # pip's rewrite, site included
        assert "import re\n" not in text and "reaper.cli" in text
        pip_show = subprocess.run([os.path.join(venv, "bin", "pip"), "show", "-f", "process-reaper"],
                                  stdout=subprocess.PIPE, timeout=60)
        assert pip_show.returncode == 0
        import glob
        for entry_points in glob.glob(os.path.join(venv, "lib", "python3*", "site-packages",
                                                   "process_reaper-*.dist-info", "entry_points.txt")):
            with open(entry_points) as f:
                assert "console_scripts" not in f.read()    # only the (inert) pytest11 plugin
        proc = sandbox.spawn([launcher, "exec", "--", "sh", "-c", "exit 3"],
                             env=clean_env(PATH="/usr/bin:/bin", REAPER_REGISTRY=sandbox.registry),
                             stderr=subprocess.PIPE, cwd="/")
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 3, err.decode()
    finally:
        shutil.rmtree(base, ignore_errors=True)
