"""The control channel: how `reaper kill` asks a running supervisor to stop its job.

A unix datagram socket that the supervisor adds to the poll(2) set it already
sleeps in, so the channel costs no wake-up while nobody writes to it.  It sets
SO_PASSCRED, so the kernel attaches the sender's pid, uid and gid to each
datagram (SCM_CREDENTIALS, unix(7)); an unprivileged sender cannot forge them.
Requests from any uid other than the supervisor's own or root are dropped.

The address is *autobound* (unix(7): bind with an empty address): the kernel
picks an unused abstract name, five hex digits, which the registry entry
records.  Nothing is created on disk, so registering costs no inode creation
and removal on the exec path (measured: those two journalled operations were
the slowest part of registering on ext4), and nobody can take the name before
the supervisor does.  Abstract names live in the network namespace: a client
in another one, or one whose send fails for any other reason, falls back to
pidfd_send_signal(SIGTERM) (the supervisor's ladder with its own grace).  The
client pins the supervisor with a pidfd before it sends (reaper.registry);
once the supervisor is gone its name may be reused, so a request that races
with its death could reach another socket -- which, lacking our credentials
check, learns only that someone asked for a stop.

Why not only signals: a stop needs a signal *and* a grace period, and a signal
carries no argument (set_wakeup_fd passes only the number).

The request is one line of ASCII: `stop <signal number> <grace seconds|->`.
`_socket` is used directly: `socket` imports enum, selectors and more (~4 ms),
on every `reaper exec`.
"""

import os

import _socket

MAX_REQUEST = 256


def _valid(name):
    return isinstance(name, str) and 0 < len(name) <= 16 and all(c in "0123456789abcdef" for c in name)


class Listener:
    """The supervisor's end, polled for POLLIN.  `name` goes into the registry entry."""

    def __init__(self):
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC
                              | _socket.SOCK_NONBLOCK)
        try:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
            sock.bind("")       # autobind: the kernel picks a free abstract name
            address = sock.getsockname()
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.fd = sock.fileno()
        self.name = address[1:].decode("ascii") if isinstance(address, bytes) else address[1:]
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


def send_stop(name, sig, grace_s):
    """Ask the supervisor listening at abstract `name` to stop its job.  OSError if unreachable."""
    if not _valid(name):
        raise OSError(22, f"not a control socket name: {name!r}")
    grace = "-" if grace_s is None else repr(float(grace_s))
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        sock.sendto(f"stop {int(sig)} {grace}".encode(), _socket.MSG_DONTWAIT, b"\0" + name.encode("ascii"))
    finally:
        sock.close()
