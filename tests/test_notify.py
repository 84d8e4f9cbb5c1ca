"""The sd_notify relay, against a real notification socket owned by the test.

The test plays systemd's part of the protocol (sd_notify(3)): it binds a
datagram socket with SO_PASSCRED, points NOTIFY_SOCKET at it, and reads what
arrives with the sender's credentials, exactly as the manager does.  That
every datagram comes from reaper's pid is what NotifyAccess=main checks.  The
units themselves are exercised under a real systemd in tests/systemd/.
"""

import os
import select
import socket
import struct
import subprocess
import sys

import pytest

from conftest import Lines

pytestmark = pytest.mark.timeout(60)

SEND = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers", "notify_send.py")


class FakeManagerSocket:
    """The receiving end of NOTIFY_SOCKET: datagrams with the sender's pid."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)

    def receive(self, timeout_s=20.0):
        self.sock.settimeout(timeout_s)
        data, ancdata, _, _ = self.sock.recvmsg(8192, socket.CMSG_SPACE(12) + socket.CMSG_SPACE(64))
        pid = None
        for level, kind, payload in ancdata:
            if kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
            elif kind == socket.SCM_RIGHTS:
                for i in range(0, len(payload) - len(payload) % 4, 4):
                    os.close(struct.unpack("i", payload[i:i + 4])[0])
        return pid, data

    def pending(self):
        self.sock.setblocking(False)
        try:
            return self.sock.recv(8192)
        except BlockingIOError:
            return None
        finally:
            self.sock.setblocking(True)

    def close(self):
        self.sock.close()


@pytest.fixture
def manager(tmp_path):
    m = FakeManagerSocket(str(tmp_path))
    yield m
    m.close()


def run_notifying(sandbox, manager, *messages, options=(), env=None):
    """reaper -v with a job that sends each message (a separate datagram), then waits for stdin."""
    env = dict(env or sandbox.env, NOTIFY_SOCKET=manager.path, WATCHDOG_PID="1", WATCHDOG_USEC="1000000")
    return sandbox.reaper("exec", "-v", *options, "--", sys.executable, SEND, *messages, env=env,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc):
    out, err = proc.communicate(b"", timeout=30)
    return proc.returncode, out, err


def test_job_messages_reach_the_manager_as_reapers_own(sandbox, manager):
    proc = run_notifying(sandbox, manager, "STATUS=starting", "READY=1\nSTATUS=serving", "WATCHDOG=1",
                         "RELOADING=1", "STOPPING=1")
    got = [manager.receive() for _ in range(5)]
    assert [data for _, data in got] == [b"STATUS=starting", b"READY=1\nSTATUS=serving", b"WATCHDOG=1",
                                         b"RELOADING=1", b"STOPPING=1"]
    assert {pid for pid, _ in got} == {proc.pid}, "NotifyAccess=main accepts only reaper's pid"
    code, out, err = finish(proc)
    assert code == 0, err
    job_env = dict(line.split("=", 1) for line in out.decode().splitlines() if "=" in line)
    assert job_env["NOTIFY_SOCKET"] != manager.path     # the job talks to reaper's socket
    assert "WATCHDOG_PID" not in job_env                # it named reaper: sd_watchdog_enabled() needs it gone
    assert job_env["WATCHDOG_USEC"] == "1000000"
    assert not os.path.exists(job_env["NOTIFY_SOCKET"])     # removed with its directory
    sandbox.assert_empty()


def test_mainpid_is_removed_so_reaper_stays_the_main_process(sandbox, manager):
    proc = run_notifying(sandbox, manager, "MAINPID=4242\nREADY=1")
    assert manager.receive() == (proc.pid, b"READY=1")
    code, _, err = finish(proc)
    assert code == 0
    assert err.count(b"reaper: notify: removed MAINPID=") == 1


@pytest.mark.parametrize("message, reason", [
    ("@oversized", b"larger than 4096 bytes"),
    ("@nul", b"contains a NUL byte"),
    ("@latin1", b"not UTF-8"),
    ("no equals sign", b"not VAR=VALUE"),
])
def test_bad_datagram_is_dropped_with_one_line_and_the_rest_goes_on(sandbox, manager, message, reason):
    proc = run_notifying(sandbox, manager, message, "READY=1")
    assert manager.receive() == (proc.pid, b"READY=1")
    code, _, err = finish(proc)
    assert code == 0
    dropped = [line for line in err.splitlines() if b"notify: dropped" in line]
    assert len(dropped) == 1 and reason in dropped[0], err
    assert manager.pending() is None
    sandbox.assert_empty()


def test_notify_ready_sends_ready_once_the_job_has_started(sandbox, manager):
    proc = run_notifying(sandbox, manager, options=("--notify-ready",))
    assert manager.receive() == (proc.pid, b"READY=1")
    code, _, err = finish(proc)
    assert code == 0, err
    assert manager.pending() is None


def test_notify_ready_without_a_notify_socket_says_so_and_runs(sandbox):
    code, _, err = sandbox.run("exec", "-v", "--notify-ready", "--", "true")
    assert code == 0
    assert b"reaper: --notify-ready: no NOTIFY_SOCKET in the environment" in err


def test_a_socket_path_too_long_falls_back_to_an_abstract_socket(sandbox, manager, tmp_path):
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    env = dict(sandbox.env, XDG_RUNTIME_DIR=str(deep))
    proc = run_notifying(sandbox, manager, "READY=1", env=env)
    assert manager.receive() == (proc.pid, b"READY=1")
    code, out, err = finish(proc)
    assert code == 0, err
    assert err.count(b"is longer than the 107 bytes a socket path may have; using an abstract socket") == 1
    assert b"NOTIFY_SOCKET=@reaper-notify." in out
    assert os.listdir(deep) == []


def test_relay_costs_no_wakeup_while_the_job_is_quiet(sandbox, manager):
    proc = sandbox.reaper("exec", "--", "sh", "-c", "echo ready; read x; exit 0",
                          env=dict(sandbox.env, NOTIFY_SOCKET=manager.path),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    Lines(proc.stdout).until("ready")
    # No event marks "reaper is asleep in poll": the first bounded wait on the
    # job's silent pipe lets it get there, the second is the idle period.
    assert not select.select([proc.stdout], [], [], 0.5)[0]
    before = switches(proc.pid)
    assert not select.select([proc.stdout], [], [], 1.0)[0]
    assert switches(proc.pid) == before
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0


def switches(pid):
    with open(f"/proc/{pid}/status") as f:
        return [line for line in f if line.startswith("voluntary_ctxt_switches")]
