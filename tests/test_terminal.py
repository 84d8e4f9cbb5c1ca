"""At a terminal: interactive jobs, Ctrl-C, Ctrl-Z / fg, and background reads.

A private tmux server (its own socket, started inside the test cgroup) plays
the user's terminal.  Prompts are events: PROMPT_COMMAND runs
`tmux wait-for -S prompt`, and the test blocks in `tmux wait-for prompt`.
Only process states (running, stopped) have no event and are polled with a
deadline.
"""

import os
import select
import shutil
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from conftest import ROOT, cg_wait_empty

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not shutil.which("tmux"), reason="tmux is not installed")]

REAPER = f"{sys.executable} -m reaper"


class Tmux:
    def __init__(self, sandbox, command):
        self.sock = f"reaper-test-{uuid.uuid4().hex[:8]}"
        self.sandbox = sandbox
        env = dict(sandbox.env, PS1="PROMPT$ ", PYTHONPATH=ROOT, TERM="xterm",
                   PROMPT_COMMAND="tmux wait-for -S prompt")
        env.pop("TMUX", None)
        client = sandbox.spawn(["tmux", "-L", self.sock, "-f", "/dev/null", "new-session", "-d",
                                "-s", "t", "-x", "120", "-y", "40", command], env=env)
        assert client.wait(timeout=10) == 0
        self.server = psutil.Process(int(self.tmux("display-message", "-p", "#{pid}").strip()))

    def tmux(self, *args, timeout=10):
        return subprocess.run(["tmux", "-L", self.sock, *args], check=True, timeout=timeout,
                              capture_output=True, text=True).stdout

    def keys(self, *keys):
        self.tmux("send-keys", "-t", "t", *keys)

    def wait_prompt(self):
        self.tmux("wait-for", "prompt", timeout=15)

    def screen(self):
        return self.tmux("capture-pane", "-p", "-t", "t")

    def wait_screen(self, predicate, timeout_s=10.0):
        deadline = time.monotonic() + timeout_s
        while not predicate(self.screen()):
            assert time.monotonic() < deadline, f"screen never matched:\n{self.screen()}"
            time.sleep(0.02)

    def close(self):
        if self.server.is_running():
            subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True, timeout=10)
        wait_gone(self.server)


def wait_gone(proc, timeout_s=10.0):
    """Block on a pidfd until `proc` has exited."""
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([fd], [], [], timeout_s)[0], f"{proc.pid} did not exit"
    finally:
        os.close(fd)


def wait_process(sandbox, name, state=None, timeout_s=10.0):
    """Poll (bounded) until a process `name` in the test cgroup is in `state`."""
    deadline = time.monotonic() + timeout_s
    while True:
        for pid in sandbox.job_pids():
            try:
                p = psutil.Process(pid)
                if p.name() == name and (state is None or p.status() == state):
                    return p
            except psutil.Error:
                continue
        assert time.monotonic() < deadline, f"no {name} process in state {state}"
        time.sleep(0.02)


def wait_foreground(proc, timeout_s=10.0):
    """Poll (bounded) until `proc` owns the terminal and waits for input in it.

    Keys typed earlier could reach the shell while readline has the terminal
    in raw mode (no echo), so tests type only once the job really reads.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        with open(f"/proc/{proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        state, pgrp, tpgid = fields[0], int(fields[2]), int(fields[5])
        if state == "S" and tpgid == pgrp:
            return
        assert time.monotonic() < deadline, f"{proc.pid} never read the terminal in the foreground"
        time.sleep(0.02)


def wait_status(proc, state, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while proc.status() != state:
        assert time.monotonic() < deadline, f"{proc.pid} never reached {state}"
        time.sleep(0.02)


@pytest.fixture
def tmux_factory(sandbox):
    sessions = []

    def make(command):
        session = Tmux(sandbox, command)
        sessions.append(session)
        return session
    yield make
    for session in sessions:
        session.close()
    # The panes' processes get SIGHUP from the dying server; wait until they are gone.
    cg_wait_empty(sandbox.path)


def test_interactive_bash_ctrl_c_interrupts_a_foreground_sleep_and_exit_returns(sandbox, tmux_factory, mode):
    term = tmux_factory(f"{REAPER} exec --containment {mode} -- bash --norc --noprofile")
    term.wait_prompt()
    term.keys("sleep 1000", "Enter")
    sleeper = wait_process(sandbox, "sleep")
    term.keys("C-c")
    term.wait_prompt()
    assert not sleeper.is_running()
    reaper = [p for p in term.server.children() if "reaper" in " ".join(p.cmdline())][0]
    term.keys("exit", "Enter")
    wait_gone(reaper)
    wait_gone(term.server)


def test_ctrl_z_suspends_the_job_and_fg_resumes_it(sandbox, tmux_factory, mode):
    term = tmux_factory("bash --norc --noprofile")
    term.wait_prompt()
    term.keys(f"{REAPER} exec --containment {mode} -- cat", "Enter")
    cat = wait_process(sandbox, "cat", psutil.STATUS_SLEEPING)
    wait_foreground(cat)
    term.keys("hello", "Enter")
    term.wait_screen(lambda s: s.count("hello") == 2)       # typed echo + cat's copy
    term.keys("C-z")
    term.wait_prompt()                                       # the shell has the terminal again
    assert "Stopped" in term.screen()
    assert cat.status() == psutil.STATUS_STOPPED
    term.keys("fg", "Enter")
    wait_foreground(cat)
    term.keys("again", "Enter")
    term.wait_screen(lambda s: s.count("again") == 2)
    term.keys("C-d")
    term.wait_prompt()
    term.keys("echo rc=$?", "Enter")
    term.wait_prompt()
    assert "rc=0" in term.screen()
    assert not cat.is_running()


def test_background_job_reading_the_terminal_stops_like_in_a_shell(sandbox, tmux_factory, mode):
    term = tmux_factory("bash --norc --noprofile")
    term.wait_prompt()
    term.keys(f"{REAPER} exec --containment {mode} -- cat &", "Enter")
    term.wait_prompt()
    cat = wait_process(sandbox, "cat", psutil.STATUS_STOPPED)      # SIGTTIN on its read
    reaper = psutil.Process(cat.ppid())
    wait_status(reaper, psutil.STATUS_STOPPED)                      # ...and reaper follows
    term.keys("fg", "Enter")
    wait_foreground(cat)
    term.keys("bg-read", "Enter")
    term.wait_screen(lambda s: s.count("bg-read") == 2)
    term.keys("C-d")
    term.wait_prompt()
    term.keys("echo rc=$?", "Enter")
    term.wait_prompt()
    assert "rc=0" in term.screen()
