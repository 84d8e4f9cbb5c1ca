"""The sd_notify relay: the job talks to systemd through reaper, the unit's main process.

With Type=notify and the default NotifyAccess=main, systemd accepts a
notification only from the unit's main process (systemd.service(5)), which
is reaper, not the job: a job's READY=1 is dropped and the start times out.
So where reaper finds NOTIFY_SOCKET in its environment, it gives the job a
socket of its own instead (NOTIFY_SOCKET points there) and forwards what
arrives to the real one, as itself:
- every line but MAINPID= is forwarded as it came (READY=1, RELOADING=1,
  STOPPING=1, STATUS=, WATCHDOG=1, WATCHDOG=trigger, EXTEND_TIMEOUT_USEC=,
  ERRNO=, ...), with any file descriptors attached (FDSTORE=1, BARRIER=1):
  one datagram in, one datagram out, so sd_notify_barrier(3) still works;
- MAINPID= is removed: reaper stays the main process, which is what makes
  the relay, the stop ladder and `systemctl reload` (HUP to reaper) work;
- a datagram larger than systemd's own limit (4096 bytes, NOTIFY_BUFFER_MAX
  in src/core/manager.c), not UTF-8, with a NUL, or with a line that is not
  VAR=VALUE is dropped with one `reaper:` line under -v, as systemd would;
- only the same uid (or root) may send (SCM_CREDENTIALS): the socket lives in
  a 0700 directory, and where that path is too long for sun_path (108 bytes)
  reaper falls back to an abstract socket, which has no file permissions.
WATCHDOG_PID is removed from the job's environment: it names reaper, so
sd_watchdog_enabled(3) in the job would otherwise say no.

`--notify-ready` makes reaper itself send READY=1 once the job has started
(exec succeeded), for jobs that know nothing of sd_notify.

The socket is one more descriptor in the supervisor's poll(2): no timer, no
thread, no wake-up while nothing is sent.
"""

import errno
import os
import socket

MAX_DATAGRAM = 4096
SUN_PATH_MAX = 107      # sizeof(sun_path) - 1 for the NUL
FORWARD_WITHOUT = (b"MAINPID=",)


def _address(value):
    """NOTIFY_SOCKET as an address for sendmsg: a path, or '\\0name' for '@name'."""
    return "\0" + value[1:] if value.startswith("@") else value


def _base_dir():
    for base in (os.environ.get("XDG_RUNTIME_DIR"), "/run" if os.geteuid() == 0 else None,
                 os.environ.get("TMPDIR"), "/tmp"):
        if base and os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK):
            return base
    return "/tmp"


class Relay:
    """The job's notification socket, and the forwarding to systemd's."""

    def __init__(self, target, log, ready_on_start):
        self.target = _address(target)
        self.log = log
        self.ready_on_start = ready_on_start
        self.dir = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.address = self._bind()
        self.fd = self.sock.fileno()
        self.euid = os.geteuid()

    def _bind(self):
        name = f"reaper-notify.{os.getpid()}.{os.urandom(4).hex()}"
        directory = os.path.join(_base_dir(), name)
        path = os.path.join(directory, "notify")
        if len(path.encode()) <= SUN_PATH_MAX:
            os.mkdir(directory, 0o700)
            try:
                self.sock.bind(path)
            except OSError:
                os.rmdir(directory)
                raise
            self.dir = directory
            return path
        self.log(f"notify: {path} is longer than the {SUN_PATH_MAX} bytes a socket path may have; "
                 "using an abstract socket")
        self.sock.bind("\0" + name)
        return "@" + name

    @classmethod
    def setup(cls, log, ready_on_start=False):
        """A relay if reaper has a NOTIFY_SOCKET; also points the job's environment at it."""
        target = os.environ.get("NOTIFY_SOCKET")
        if not target:
            if ready_on_start:
                log("--notify-ready: no NOTIFY_SOCKET in the environment: nobody to tell")
            return None
        try:
            relay = cls(target, log, ready_on_start)
        except OSError as e:
            log(f"notify: cannot make the job's notification socket ({e.strerror or e}); the job keeps "
                f"NOTIFY_SOCKET={target}{' and READY=1 is not sent' if ready_on_start else ''}")
            return None
        os.environ["NOTIFY_SOCKET"] = relay.address     # inherited by the job at exec
        os.environ.pop("WATCHDOG_PID", None)
        log(f"notify: the job's NOTIFY_SOCKET is {relay.address}, relayed to {target}")
        return relay

    def send(self, data, fds=()):
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(memoryview(_ints(fds))))] if fds else []
        try:
            self.out.sendmsg([data], ancillary, 0, self.target)
        except OSError as e:
            self.log(f"notify: cannot send to {self.target.lstrip(chr(0))}: {e.strerror}")

    @property
    def fds(self):
        return (self.fd,)

    def started(self, sup):
        if self.ready_on_start:
            self.log(f"notify: READY=1 (--notify-ready, pid {sup.pid} started)")
            self.send(b"READY=1")

    def on_readable(self, sup=None, fd=None):
        """Forward every datagram waiting on the socket; never blocks."""
        cmsg_space = socket.CMSG_SPACE(12) + socket.CMSG_SPACE(4 * 253)
        while True:
            try:
                data, ancdata, flags, _ = self.sock.recvmsg(MAX_DATAGRAM + 1, cmsg_space,
                                                            socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    return
                raise
            fds, pid, uid = [], None, None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds += _from_bytes(payload)
                elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid, uid, _ = _ints_from(payload[:12])
            try:
                problem = self._check(data, flags, uid)
                if problem:
                    self.log(f"notify: dropped a datagram from pid {pid}: {problem}")
                    continue
                lines = [line for line in data.split(b"\n") if not line.startswith(FORWARD_WITHOUT)]
                if len(lines) != len(data.split(b"\n")):
                    self.log(f"notify: removed MAINPID= from pid {pid} (reaper stays the main process)")
                forward = b"\n".join(lines)
                if forward.strip(b"\n"):
                    self.send(forward, fds)
            finally:
                for fd in fds:
                    os.close(fd)

    def _check(self, data, flags, uid):
        if uid is not None and uid not in (self.euid, 0):
            return f"uid {uid} may not notify"
        if flags & socket.MSG_TRUNC or len(data) > MAX_DATAGRAM:
            return f"larger than {MAX_DATAGRAM} bytes"
        if not data.strip(b"\n"):
            return "empty"
        if b"\0" in data:
            return "contains a NUL byte"
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return "not UTF-8"
        for line in data.split(b"\n"):
            if line and (b"=" not in line or line.startswith(b"=")):
                return f"not VAR=VALUE: {line[:40]!r}"
        return None

    def close(self):
        self.sock.close()
        self.out.close()
        if self.dir:
            try:
                os.unlink(os.path.join(self.dir, "notify"))
                os.rmdir(self.dir)
            except OSError:
                pass


def _ints(values):
    import array
    return array.array("i", values)


def _from_bytes(payload):
    import array
    fds = array.array("i")
    fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return list(fds)


def _ints_from(payload):
    import struct
    return struct.unpack("iII", payload)
