"""Self-test of the benchmark (bench/run.py), so that it cannot rot unnoticed.

It runs the real entry point as a subprocess on a tiny configuration: the
start-up metric (posix_spawn timing, no cgroup per trial) and signal latency
(every contestant in its own trial cgroup, so the bench's cgroup subtree, its
clean-up and its subreaper are exercised), with three rounds each.  reaper is
the checkout under test (`python -m reaper` with PYTHONPATH), as in the rest of
the suite.  The test checks the exit status, the JSON's shape, and that the
bench left nothing behind: no `reaper-bench.*` cgroup and no process carrying
the marker this test puts in the bench's environment.
"""

import json
import os
import shlex
import subprocess
import sys
import uuid

import pytest

from conftest import marked_processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench", "run.py")
sys.path.insert(0, os.path.join(ROOT, "bench"))


def bench_cgroups(parent):
    return {d for d in os.listdir(parent) if d.startswith("reaper-bench.")}


@pytest.mark.timeout(120)
def test_bench_runs_and_cleans_up(tmp_path):
    import benchlib
    try:
        parent = benchlib.own_cgroup_dir()
    except benchlib.BenchError as e:
        pytest.skip(f"the bench needs a writable cgroup v2: {e}")
    marker = uuid.uuid4().hex
    env = dict(os.environ, REAPER_BENCH_SELFTEST=marker, PYTHONPATH=ROOT)
    before = bench_cgroups(parent)
    out = tmp_path / "results.json"
    reaper = shlex.join([sys.executable, "-m", "reaper"])
    r = subprocess.run([sys.executable, BENCH, "--quick", "--only", "startup,signal", "--runs", "3",
                        "--reaper", reaper, "--json", str(out)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=env, cwd=ROOT, timeout=110)
    stderr = r.stderr.decode(errors="replace")
    try:
        assert r.returncode == 0, stderr
        doc = json.loads(out.read_text())
        for key in ("machine", "config", "contestants", "metrics", "targets", "notes"):
            assert key in doc, key
        assert doc["config"]["metrics"] == ["startup", "signal"]
        startup = doc["metrics"]["startup"]["commands"]
        for key in ("bare", "python", "python-I-S", "reaper-cgroup", "reaper-pgroup"):
            assert startup[key]["n"] == 3, (key, startup[key])
            assert startup[key]["median"] > 0
        assert startup["reaper-cgroup"]["x_python"] is not None
        latency = doc["metrics"]["signal"]["contestants"]
        for key in ("bare", "reaper-cgroup", "reaper-pgroup"):
            assert latency[key]["n"] == 3 and latency[key]["lost"] == 0, (key, latency[key])
        assert any(t["metric"] == "start-up" for t in doc["targets"])
        assert "| contestant |" in r.stdout.decode()
    finally:
        left = marked_processes("REAPER_BENCH_SELFTEST", marker)
        # Other benches may run at the same time: look for this run's own
        # subtree (named in its JSON), or for any new one if there is no JSON.
        try:
            own = os.path.basename(json.loads(out.read_text())["machine"]["cgroup"]["bench_subtree"])
            new_cgroups = bench_cgroups(parent) & {own}
        except (OSError, ValueError, KeyError, TypeError):
            new_cgroups = bench_cgroups(parent) - before
        for pid in left:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
    assert not left, f"the bench left processes behind: {left}"
    assert not new_cgroups, f"the bench left cgroups behind: {new_cgroups}"
