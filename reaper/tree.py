"""The process tree below reaper, signalled without ever touching a pid that is not pinned.

Used as the whole containment where no cgroup v2 can be written, and by the
cgroup containment for processes a (root) job moved out of its cgroup.  reaper
is a child subreaper, so every orphan of the job re-parents to reaper and the
tree below reaper is the job.

Pinning (the one rule: never signal a pid that may have been reused):
- reaper's own children are pinned while un-reaped, and reaper does not reap
  during a sweep;
- every other process is reached through its parent's
  /proc/PID/task/TID/children list, opened as a pidfd, and accepted only if
  /proc/PID/stat still names that (pinned, stopped or killed) parent, which
  can no longer fork.  A reused pid would have another parent.  Signals then
  go through the pidfd (pidfd_send_signal(2)), so the process signalled is the
  process checked.  Each pidfd is closed when the sweep ends.

Sweeps:
- SIGKILL: kill each process as it is found, then read its children.  A
  process with a fatal signal pending cannot fork (copy_process() restarts and
  the caller dies), and children of a dying process re-parent to reaper, so
  rescanning from reaper until a pass finds nothing new reaches everything.
- any other signal: SIGSTOP each process as it is found, rescan until a pass
  finds nothing new (a process with SIGSTOP pending cannot fork either), then
  send the signal to the exact, stable set and SIGCONT it.  Each process gets
  the signal once, fork bombs included.

This needs a /proc that shows reaper's own pid namespace (`/proc/self` is our
pid).  Without one there is nothing safe to enumerate: containment.choose()
refuses the fallback then (or, as PID 1, uses kill(-1), which the kernel
applies atomically to the whole namespace).  psutil is deliberately not used
here: it lists every process of the machine per scan (O(system), not O(job))
and checks identity by create time after the fact.
"""

import errno
import os
import _signal

from reaper import procfs

SIGKILL, SIGSTOP, SIGCONT = _signal.SIGKILL, _signal.SIGSTOP, _signal.SIGCONT
MAX_ROUNDS = 1000       # each round only adds processes; a stopped tree cannot grow


def proc_usable():
    """Does /proc show this process's own pid namespace?"""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


def _read(path):
    """The whole file, or None.  os.open/os.read: four system calls per file where
    a buffered file object makes seven, for each process in every round."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)


def _stat(pid):
    """(ppid, number of threads), or None if it is gone."""
    st = procfs.fields(pid)
    return None if st is None else (int(st[1]), int(st[17]))


def children(pid, threads=(None,)):
    """Child pids of every thread of `pid` (threads: tids, or (None,) for the main thread)."""
    found = []
    for tid in threads:
        data = _read(f"/proc/{pid}/task/{tid or pid}/children")
        if data:
            found.extend(int(x) for x in data.split())
    return found


def own_children():
    """Children of this process (every thread's); pinned while reaper does not reap."""
    me = os.getpid()
    st = _stat(me)
    return children(me, _threads(me, st[1] if st else 1))


def _threads(pid, count):
    if count <= 1:
        return (None,)
    try:
        return tuple(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return (None,)


def _raise_fd_limit():
    """A big job needs one pidfd per process; children never inherit this limit
    (the job was started before, and orphans are forked by the job)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


class Pinned:
    """One process reached by a sweep: its pidfd (or None where none could be had)."""

    __slots__ = ("pid", "fd", "threads")

    def __init__(self, pid, fd, threads):
        self.pid, self.fd, self.threads = pid, fd, threads

    def send(self, sig):
        try:
            if self.fd is not None:
                _signal.pidfd_send_signal(self.fd, sig)
            else:
                os.kill(self.pid, sig)      # pinned by its stopped parent only (EMFILE)
        except ProcessLookupError:
            pass
        except OSError as e:
            if e.errno != errno.ESRCH:
                raise

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _pin(pid, parent, own_child):
    """Open a pidfd on `pid` and check it is still `parent`'s child; None if not."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    except OSError as e:
        if e.errno not in (errno.EMFILE, errno.ENFILE):
            return None
        fd = None
    st = _stat(pid)
    if st is None or (not own_child and st[0] != parent):
        if fd is not None:
            os.close(fd)
        return None
    return Pinned(pid, fd, _threads(pid, st[1]))


class Sweep:
    """Every process below reaper (or below `roots`), each pinned, found under `sig`."""

    def __init__(self, roots=None, exclude=None):
        self.me = os.getpid()
        self.roots = roots
        self.exclude = exclude
        self.found = {}

    def _root_pids(self):
        return own_children() if self.roots is None else self.roots

    def collect(self, first_signal):
        """Walk the tree, sending `first_signal` to each process as it is pinned."""
        _raise_fd_limit()
        for _ in range(MAX_ROUNDS):
            added = 0
            stack = [(pid, self.me, True) for pid in self._root_pids()]
            while stack:
                pid, parent, own = stack.pop()
                proc = self.found.get(pid)
                if proc is None:
                    if self.exclude is not None and self.exclude(pid):
                        continue
                    proc = _pin(pid, parent, own)
                    if proc is None:
                        continue
                    proc.send(first_signal)
                    self.found[pid] = proc
                    added += 1
                stack.extend((child, pid, False) for child in children(pid, proc.threads))
            if not added:
                break
        return list(self.found.values())

    def close(self):
        for proc in self.found.values():
            proc.close()


def signal_all(sig, roots=None, exclude=None):
    """Deliver `sig` once to every process below reaper (or below `roots`); return how many."""
    sweep = Sweep(roots, exclude)
    try:
        if sig == SIGKILL:
            return len(sweep.collect(SIGKILL))
        procs = sweep.collect(SIGSTOP)
        if sig != SIGSTOP:
            for proc in procs:
                proc.send(sig)
            for proc in procs:
                proc.send(SIGCONT)
        return len(procs)
    finally:
        sweep.close()
