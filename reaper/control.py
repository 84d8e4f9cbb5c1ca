"""The control channel: how `reaper kill` asks a running supervisor to stop its job.

A unix datagram socket, `ctl.<pid>.<start time>` in the supervisor's (0700)
registry directory.  The supervisor adds its descriptor to the poll(2) set it
already sleeps in, so the channel costs no wake-up while nobody writes to it.
It sets SO_PASSCRED, so the kernel attaches the sender's pid, uid and gid to
each datagram (SCM_CREDENTIALS, unix(7)); an unprivileged sender cannot forge
them.  Requests from any uid other than the supervisor's own or root are
dropped.

Why not only signals: a stop needs a signal *and* a grace period, and a signal
carries no argument.  The client still pins the supervisor with a pidfd first
(reaper.registry) and falls back to pidfd_send_signal(SIGTERM) -- the
supervisor's own stop ladder with its own grace -- when the socket cannot be
reached.

Paths are reached through `/proc/self/fd/<registry dir fd>/<name>`, so a
symlink planted in the registry path after it was verified is never followed;
the result stays under the 108-byte sun_path limit whatever the registry path.

The request is one line of ASCII: `stop <signal number> <grace seconds>`.
`_socket` is used directly: `socket` imports enum, selectors and more (~4 ms),
on every `reaper exec`.
"""

import os

import _socket

MAX_REQUEST = 256


def _addr(dir_fd, name):
    return f"/proc/self/fd/{dir_fd}/{name}"


class Listener:
    """The supervisor's end: bound in the registry directory, polled for POLLIN."""

    def __init__(self, dir_fd, name):
        self.dir_fd = dir_fd
        self.name = name
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC
                              | _socket.SOCK_NONBLOCK)
        try:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
            try:
                os.unlink(name, dir_fd=dir_fd)      # left by a dead process with our pid and start time? never, but cheap
            except FileNotFoundError:
                pass
            sock.bind(_addr(dir_fd, name))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.fd = sock.fileno()
        self.uid = os.geteuid()

    def receive(self):
        """Drain the socket; return [(signal, grace_s or None, sender pid, sender uid)] of accepted requests."""
        requests = []
        space = _socket.CMSG_SPACE(12)
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(MAX_REQUEST, space)
            except (BlockingIOError, InterruptedError):
                return requests
            pid = uid = None
            for level, kind, payload in ancillary:
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_CREDENTIALS and len(payload) >= 12:
                    pid = int.from_bytes(payload[0:4], "little", signed=True)
                    uid = int.from_bytes(payload[4:8], "little")
            if uid not in (self.uid, 0):
                continue
            request = parse(data)
            if request is not None:
                requests.append(request + (pid, uid))

    def close(self):
        self.sock.close()
        try:
            os.unlink(self.name, dir_fd=self.dir_fd)
        except OSError:
            pass


def parse(data):
    """`stop SIG GRACE` -> (SIG, GRACE or None); anything else -> None."""
    try:
        words = data.decode("ascii").split()
        if len(words) != 3 or words[0] != "stop":
            return None
        sig = int(words[1])
        grace = None if words[2] == "-" else float(words[2])
    except (UnicodeDecodeError, ValueError):
        return None
    if not 1 <= sig < 65 or (grace is not None and not 0 <= grace < 1e9):
        return None
    return sig, grace


def send_stop(dir_fd, name, sig, grace_s):
    """Ask the supervisor listening at `name` to stop its job.  Raises OSError if unreachable."""
    grace = "-" if grace_s is None else repr(float(grace_s))
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        sock.sendto(f"stop {int(sig)} {grace}".encode(), _socket.MSG_DONTWAIT, _addr(dir_fd, name))
    finally:
        sock.close()
