"""Plumbing shared by the bench: its cgroup subtree, the kernel's view of processes, stats.

Everything the bench starts lives below one cgroup directory that the bench
creates and owns, `<own cgroup>/reaper-bench.<uuid>`.  Each trial gets a child
cgroup there, which the launcher joins before exec (Popen preexec_fn), so the
kernel's list of that cgroup *is* the trial's process list: nothing can leave
it by forking, setsid or double fork.  Survivors are counted from
`cgroup.procs`, "done" is `populated 0` in `cgroup.events` (waited for with
POLLPRI), and clean-up is `cgroup.kill` plus rmdir.  Zombies are not members
of a cgroup, so a launcher that has exited but is not yet reaped does not keep
its trial "populated".

The cgroup2 mount is found in /proc/self/mountinfo and our place in it in
/proc/self/cgroup; no path is hard-coded.  Nothing outside the bench's own
subtree is ever written.

Waits are on events (pipes, pidfds, cgroup.events) and every one of them has a
deadline; nothing synchronises by sleeping.
"""

import ctypes
import errno
import os
import select
import signal
import statistics
import time

PR_SET_CHILD_SUBREAPER = 36


class BenchError(Exception):
    pass


# -- cgroup v2 ---------------------------------------------------------------

def _unescape(field):
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape").encode("latin-1").decode()


def own_cgroup_dir():
    """Directory of this process's cgroup v2, or raise BenchError saying why not."""
    mount = root = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, sep, right = line.partition(" - ")
            if sep and right.startswith("cgroup2 "):
                fields = left.split()
                mount, root = _unescape(fields[4]), _unescape(fields[3])
    if mount is None:
        raise BenchError("no cgroup2 hierarchy is mounted")
    rel = None
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                rel = line[3:].rstrip("\n")
    if rel is None:
        raise BenchError("this process has no cgroup v2 path (/proc/self/cgroup)")
    if root not in ("/", ""):
        if not (rel == root or rel.startswith(root + "/")):
            raise BenchError(f"own cgroup {rel} is not visible under {mount}")
        rel = rel[len(root):]
    path = os.path.normpath(mount + "/" + rel.lstrip("/"))
    if not os.path.isdir(path):
        raise BenchError(f"own cgroup directory {path} does not exist")
    if not os.access(path, os.W_OK) or not os.access(os.path.join(path, "cgroup.procs"), os.W_OK):
        raise BenchError(f"{path} is not writable by uid {os.geteuid()} (run as root, "
                         "or from a delegated cgroup)")
    return path


def cg_write(path, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def cg_join(path):
    """Move the calling process into cgroup `path` (used between fork and exec)."""
    cg_write(os.path.join(path, "cgroup.procs"), b"0")


def cg_pids(path):
    """Every pid in `path` and below (the kernel's view; zombies excluded)."""
    pids = []
    for root, _, files in os.walk(path):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(root, "cgroup.procs")) as f:
                    pids += [int(x) for x in f.read().split()]
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENODEV):
                    raise
    return pids


def cg_populated(path):
    try:
        with open(os.path.join(path, "cgroup.events")) as f:
            return "populated 1" in f.read()
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENODEV):
            return False
        raise


class Events:
    """An open cgroup.events: read 'populated', wait for it to drop with POLLPRI."""

    def __init__(self, path):
        self.fd = os.open(os.path.join(path, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLPRI)

    def populated(self):
        try:
            return b"populated 1" in os.pread(self.fd, 4096, 0)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENODEV):
                return False
            raise

    def close(self):
        os.close(self.fd)


def cg_enable_pids(path):
    """Give the children of `path` the pids controller (pids.max), if cgroup v2 has it here.

    Hybrid hosts often keep pids on cgroup v1 only; then nothing is enabled and
    the bench's bound on a trial is forktree's own limit on N.  `path` must hold
    no processes itself (cgroup v2's no-internal-process rule).
    """
    try:
        with open(os.path.join(path, "cgroup.controllers")) as f:
            if "pids" not in f.read().split():
                return False
        cg_write(os.path.join(path, "cgroup.subtree_control"), b"+pids")
        return True
    except OSError:
        return False


def cg_limit_pids(path, n):
    """Cap the number of tasks in `path` (and below) at n, where pids.max exists."""
    limit = os.path.join(path, "pids.max")
    if not os.path.exists(limit):
        return False
    cg_write(limit, str(n).encode())
    return True


def has_cgroup_kill(path):
    return os.path.exists(os.path.join(path, "cgroup.kill"))


def cg_kill(path):
    """SIGKILL everything in `path` and below (cgroup.kill, or pid by pid without it)."""
    if has_cgroup_kill(path):
        try:
            cg_write(os.path.join(path, "cgroup.kill"), b"1")
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENODEV):
                raise
        return
    for pid in cg_pids(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def cg_wait_empty(path, timeout_s):
    """Block until nothing is left in `path` (True) or the deadline passes (False)."""
    try:
        ev = Events(path)
    except FileNotFoundError:
        return True
    try:
        deadline = time.monotonic() + timeout_s
        while ev.populated():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ev.poller.poll(min(left, 0.25) * 1000)
            if not has_cgroup_kill(path):
                cg_kill(path)       # pid-by-pid fallback may miss fresh forks: repeat
        return True
    finally:
        ev.close()


def cg_destroy(path, timeout_s=10.0):
    """Kill everything in `path`, wait until empty, remove it and its children."""
    if not os.path.isdir(path):
        return True
    cg_kill(path)
    empty = cg_wait_empty(path, timeout_s)
    for root, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            _rmdir(os.path.join(root, d))
    return _rmdir(path) and empty


def _rmdir(path):
    try:
        os.rmdir(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


# -- processes ----------------------------------------------------------------

def become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def children_of(pid):
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def reap_strays(keep=()):
    """Reap exited children we did not start ourselves (orphans adopted as subreaper).

    Returns how many such children there were, exited or not: as the bench is a
    subreaper, each one is a process that its supervisor let go of.
    """
    seen = 0
    for pid in children_of(os.getpid()):
        if pid in keep:
            continue
        seen += 1
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    return seen


def proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return chr(data[data.rindex(b")") + 2])


def status_fields(pid, names):
    """Sum the given /proc/PID/task/*/status fields over all threads (kB or counts).

    Memory fields (Vm*) are per process, so those are taken once, not summed.
    """
    out = dict.fromkeys(names, 0)
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for i, tid in enumerate(tids):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in out and (i == 0 or not key.startswith("Vm")):
                        out[key] += int(value.split()[0])
        except OSError:
            continue
    return out


def cpu_ns(pid):
    """CPU time of all threads of `pid` in ns (schedstat), or None if gone."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


class Lines:
    """Lines from a pipe; each wait is bounded and blocks in poll(), never sleeps."""

    def __init__(self, fd):
        self.fd = fd
        self.buf = b""
        self.eof = False

    def wait_for(self, prefix, timeout_s):
        """Return the first line starting with `prefix`, or None on EOF/deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if line.startswith(prefix.encode()):
                    return line.decode(errors="replace")
            if self.eof:
                return None
            if not self.read(deadline - time.monotonic()):
                return None

    def read(self, timeout_s):
        """Read what is there within `timeout_s`; False on deadline or EOF."""
        if timeout_s <= 0:
            return False
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        if not p.poll(timeout_s * 1000):
            return False
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True


# -- statistics -----------------------------------------------------------------

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def quartiles(values):
    values = sorted(v for v in values if v is not None)
    if len(values) < 4:
        return (values[0], values[-1]) if values else (None, None)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return a / b
