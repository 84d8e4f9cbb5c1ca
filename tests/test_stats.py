"""reaper exec --stats / --stats-json: what a job cost, and where each figure came from.

On this host the cgroup v2 hierarchy has no memory or pids controller, so CPU
comes from cpu.stat (cgroup mode) and memory peak from rusage; the VM lane
(tests/test_limits.py) checks memory.peak, pids.peak and OOM kills.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import Lines, helper

pytestmark = pytest.mark.timeout(60)

BURN = ("import os,sys,time,signal\n"
        "if os.fork()==0:\n"
        "    os.setsid()\n"
        "    t=time.process_time()\n"
        "    while time.process_time()-t<0.3: pass\n"
        "    print('burnt', flush=True)\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "    signal.pause()\n"
        "else:\n"
        "    sys.stdin.read()\n")


def run_stats(sandbox, *args, timeout=30):
    out = sandbox.tmp / "stats.json"
    code, _, err = sandbox.run("exec", "--stats", "--stats-json", str(out), "--grace", "300ms", *args,
                               timeout=timeout)
    return code, json.loads(out.read_text()), err.decode()


def test_stats_summary_is_one_line_with_the_escapees_that_had_to_be_killed(sandbox, mode):
    code, doc, err = run_stats(sandbox, "--containment", mode, "--", *helper("escape.py"), "2",
                               "--ignore-term", "--exit", "3")
    assert code == 3
    lines = [l for l in err.splitlines() if l.startswith("reaper:")]
    assert len(lines) == 1 and lines[0].startswith("reaper: stats: wall ")
    assert "exited 3" in lines[0] and "leftovers killed 2" in lines[0]
    assert doc["leftovers_killed"] == 2 and doc["exit_code"] == 3 and doc["ended"] == "exited 3"
    assert doc["stop_reason"] == "the main process exited"
    sandbox.assert_empty()


def test_stats_json_names_the_source_of_each_figure(sandbox, mode):
    code, doc, _ = run_stats(sandbox, "--containment", mode, "--", "true")
    assert code == 0
    assert doc["cpu_source"] == ("cgroup" if mode == "cgroup" else "rusage")
    assert doc["containment"] == mode
    for key in ("wall_s", "cpu_user_s", "cpu_system_s", "memory_peak_bytes"):
        assert isinstance(doc[key], (int, float)) and doc[key] >= 0, key
    assert doc["memory_peak_source"] in ("cgroup", "rusage (largest single process)")
    if doc["processes_peak"] is None:
        assert doc["processes_peak_source"] is None
    assert doc["leftovers_killed"] == 0 and doc["stop_reason"] is None


def test_cpu_time_includes_escaped_processes(sandbox, mode):
    proc = sandbox.reaper("exec", "--stats-json", str(sandbox.tmp / "s.json"), "--containment", mode,
                          "--grace", "300ms", "--", sys.executable, "-c", BURN,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    Lines(proc.stdout).until("burnt", timeout_s=30)
    proc.stdin.close()      # main exits; the TERM-ignoring burner is killed after the grace
    assert proc.wait(timeout=30) == 0
    doc = json.loads((sandbox.tmp / "s.json").read_text())
    assert doc["cpu_user_s"] + doc["cpu_system_s"] >= 0.3
    assert doc["leftovers_killed"] == 1
    sandbox.assert_empty()


def test_stats_say_how_the_job_ended(sandbox):
    code, doc, _ = run_stats(sandbox, "--timeout", "200ms", "--", "sleep", "30")
    assert code == 124 and doc["ended"] == "timed out" and "--timeout" in doc["stop_reason"]
    code, doc, _ = run_stats(sandbox, "--", "sh", "-c", "kill -9 $$")
    assert code == 137 and doc["ended"] == "killed by SIGKILL"


def test_stats_record_a_stop_by_reaper_kill(sandbox):
    out = sandbox.tmp / "s.json"
    proc = sandbox.reaper("exec", "-v", "--name", "victim", "--stats-json", str(out), "--",
                          *helper("signals.py"), "--stop-exit", "7", stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    Lines(proc.stderr).until("reaper: registered as ")
    Lines(proc.stdout).until("ready ")
    code, _, err = sandbox.run("kill", "victim")
    assert code == 0, err
    assert proc.wait(timeout=30) == 7
    doc = json.loads(out.read_text())
    assert doc["stop_reason"].startswith("`reaper kill` from pid ") and doc["ended"] == "exited 7"


def test_an_unwritable_stats_file_does_not_change_the_job_status(sandbox):
    code, _, err = sandbox.run("exec", "--stats-json", str(sandbox.tmp / "no" / "dir" / "s.json"),
                               "--", "sh", "-c", "exit 4")
    assert code == 4
    assert err.decode().startswith("reaper: --stats-json ") and err.count(b"\n") == 1
