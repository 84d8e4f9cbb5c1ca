"""examples/reload.py, for real: a server whose escaped, TERM-ignoring grandchild holds the port.

The server binds a fixed port, leaves a setsid() grandchild that ignores TERM
and keeps the listening socket, and prints `serving VERSION PORT`.  Without
reaper the next version could never bind.  The test edits the server's file
and expects the reloader to stop the whole old job, see the port free, and
start the new version on the same port.  Then Ctrl-C (SIGINT) ends the
reloader, and the kernel (this test's cgroup) says nothing is left.
"""

import os
import signal
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, Lines, cg_wait_empty

pytestmark = pytest.mark.timeout(120)

SERVER = '''
import os, signal, socket, sys
VERSION = "{version}"
port = int(sys.argv[1])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            signal.pause()
    os._exit(0)
os.wait()
print(f"serving {{VERSION}} {{port}}", flush=True)
while True:
    signal.pause()
'''


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_reloader_restarts_on_change_once_the_escaped_grandchilds_port_is_free(sandbox, tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    server = app / "server.py"
    server.write_text(SERVER.format(version="v1"))
    port = free_port()
    proc = sandbox.spawn([sys.executable, os.path.join(ROOT, "examples", "reload.py"), str(app), "--",
                          sys.executable, str(server), str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = Lines(proc.stdout)
    assert lines.until("serving ", 30) == f"serving v1 {port}"
    assert lines.until("reload: listening", 30) == f"reload: listening on [{port}]"
    server.write_text(SERVER.format(version="v2"))
    os.utime(server, ns=(0, os.stat(server).st_mtime_ns + 10**9))    # a change even on coarse clocks
    assert lines.until("reload: stopped", 30).startswith("reload: stopped")
    assert lines.until("reload: ports", 30) == f"reload: ports [{port}] free"
    assert lines.until("serving ", 30) == f"serving v2 {port}", lines.seen
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) != 0       # KeyboardInterrupt, after the with block collected the job
    assert cg_wait_empty(sandbox.path, timeout_s=10), sandbox.job_pids()
    sandbox.assert_empty()
