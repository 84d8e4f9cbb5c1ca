"""cgroup v2: finding the hierarchy, and the job's own cgroup directory.

This module owns every read and write under the cgroup2 mount.  It never
assumes `/sys/fs/cgroup`: the mount is found in /proc/self/mountinfo (the last
cgroup2 entry wins, because a container that mounts its own cgroup2 over the
host's lists both and only the last one is visible at the path) and the
process's place in the hierarchy comes from the `0::` line of /proc/self/cgroup.

Where job cgroups go is decided in exactly one place, `default_parent()`:
reaper's own cgroup.  Under systemd that is the unit's (delegated) cgroup or the
user's delegated subtree, which is the only part of the tree systemd lets
another writer touch.

Killing follows Documentation/admin-guide/cgroup-v2.rst:
- `cgroup.kill` (Linux >= 5.14) SIGKILLs every task, including ones forking
  concurrently; the root cgroup has no such file, child cgroups do.
- Without it: freeze (`cgroup.freeze`), read `cgroup.procs`, signal each pid,
  thaw, and repeat until nothing is listed.  A frozen task cannot fork or exit
  (except by SIGKILL), so the pids read are not reused under our feet.
- `cgroup.events` is pollable: POLLPRI fires when `populated` or `frozen`
  changes (the kernel rate-limits these notifications to about one per 10 ms).
A cgroup that vanished counts as empty.
"""

import errno
import fcntl
import os
import select
import time

from reaper.errors import ReaperError

JOB_PREFIX = "reaper."
FREEZE_WAIT_S = 1.0     # a task stuck in D state may never report frozen


def _unescape(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape").encode("latin-1").decode()


def find_mount(mountinfo="/proc/self/mountinfo"):
    """Return (mount point, mount root, read_only, v1_too) of the visible cgroup2 mount.

    The first three are None/False when no cgroup2 is mounted; v1_too says
    whether cgroup v1 hierarchies are mounted as well (a hybrid layout).
    """
    found = (None, None, False)
    v1 = False
    try:
        with open(mountinfo) as f:
            lines = f.readlines()
    except OSError as e:
        raise ReaperError(f"cannot read {mountinfo}: {e.strerror}")
    for line in lines:
        left, sep, right = line.partition(" - ")
        if right.startswith("cgroup "):
            v1 = True
        if not sep or not right.startswith("cgroup2 "):
            continue
        fields = left.split()
        options = fields[5].split(",")
        found = (_unescape(fields[4]), _unescape(fields[3]), "ro" in options)
    return found + (v1,)


def own_path(proc_cgroup="/proc/self/cgroup"):
    """This process's cgroup v2 path relative to the hierarchy root, e.g. '/user.slice/x'."""
    try:
        with open(proc_cgroup) as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        pass
    return None


class Hierarchy:
    """The cgroup2 hierarchy as this process sees it."""

    def __init__(self, mountinfo="/proc/self/mountinfo"):
        self.mount, self.mount_root, self.read_only, v1 = find_mount(mountinfo)
        self.own = own_path()
        self.layout = "none" if not self.mount else ("hybrid" if v1 else "unified")

    def own_dir(self):
        """Directory of this process's own cgroup, or None if it is not visible."""
        if not self.mount or self.own is None:
            return None
        rel = self.own
        root = self.mount_root or "/"
        if root != "/":
            if not (rel == root or rel.startswith(root + "/")):
                return None
            rel = rel[len(root):]
        path = os.path.normpath(self.mount + "/" + rel.lstrip("/"))
        return path if os.path.isdir(path) else None

    def default_parent(self):
        """The one place that decides where job cgroups are created."""
        return self.own_dir()

    def check_parent(self, path):
        """Validate a user-supplied parent directory; return its normalised path."""
        if not self.mount:
            raise ReaperError("no cgroup2 hierarchy is mounted (see `reaper doctor`)")
        if ".." in path.split("/"):
            raise ReaperError(f"cgroup parent must not contain '..': {path}")
        if not path.startswith("/"):
            path = self.mount + "/" + path
        path = os.path.normpath(path)
        if path != self.mount and not path.startswith(self.mount.rstrip("/") + "/"):
            raise ReaperError(f"cgroup parent {path} is outside the cgroup2 mount {self.mount}")
        if not os.path.isdir(path):
            raise ReaperError(f"cgroup parent {path} does not exist")
        return path


def writable(parent):
    """Can this process create a job cgroup under `parent` and move a child into it?

    Moving a process needs write access to cgroup.procs of the common ancestor
    of source and destination (cgroup-v2.rst, "Delegation Containment"); the
    job's first process starts in reaper's own cgroup, so `parent` must be
    reaper's cgroup or below it, and its cgroup.procs writable.
    """
    if parent is None or not os.access(parent, os.W_OK | os.X_OK):
        return False
    return os.access(os.path.join(parent, "cgroup.procs"), os.W_OK)


def has_kill(path):
    return os.path.exists(os.path.join(path, "cgroup.kill")) and not os.environ.get("REAPER_NO_CGROUP_KILL")


def _write(path, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class JobCgroup:
    """One job's cgroup directory: created before the job, removed after it."""

    def __init__(self, path, lock_fd=None):
        self.path = path
        self.lock_fd = lock_fd
        self.use_kill = has_kill(path)
        self.events_fd = os.open(os.path.join(path, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
        self.gone = False

    @classmethod
    def create(cls, parent, name):
        """Make `reaper.<pid>.<name>` (or `.<n>` after it if taken) and lock it.

        The pid alone is not unique: reapers that are PID 1 of different pid
        namespaces may share a parent.  The lock marks the supervisor as alive
        for collect_stale(); if a concurrent collect_stale() got the lock of the
        fresh directory first, it removes it and we take the next name.
        """
        base = os.path.join(parent, f"{JOB_PREFIX}{os.getpid()}.{name}")
        for n in range(100):
            path = base if n == 0 else f"{base}.{n}"
            try:
                os.mkdir(path)
                lock_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except (FileExistsError, FileNotFoundError):
                continue
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return cls(path, lock_fd)
            except BlockingIOError:
                os.close(lock_fd)
                continue
            except OSError:
                os.close(lock_fd)
                _rmdir_quiet(path)
                raise
        raise OSError(errno.EEXIST, "too many job cgroups with this name", base)

    @property
    def procs_file(self):
        return os.path.join(self.path, "cgroup.procs")

    def events(self):
        """Parse cgroup.events; reading also re-arms POLLPRI.  Vanished = empty."""
        try:
            raw = os.pread(self.events_fd, 4096, 0)
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                self.gone = True
                return {"populated": 0, "frozen": 0}
            raise
        result = {}
        for line in raw.decode().splitlines():
            key, _, value = line.partition(" ")
            result[key] = int(value)
        return result

    def populated(self):
        return bool(self.events().get("populated", 0))

    def pids(self):
        try:
            with open(self.procs_file) as f:
                return [int(x) for x in f.read().split()]
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                self.gone = True
                return []
            raise

    def _freeze(self, frozen):
        try:
            _write(os.path.join(self.path, "cgroup.freeze"), b"1" if frozen else b"0")
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                self.gone = True
                return False
            raise
        if not frozen:
            return True
        deadline = time.monotonic() + FREEZE_WAIT_S
        poller = select.poll()
        poller.register(self.events_fd, select.POLLPRI)
        while True:
            ev = self.events()
            if ev.get("frozen") or not ev.get("populated"):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False    # proceed anyway; a D-state task delays freezing
            poller.poll(left * 1000)

    def signal_all(self, sig):
        """Deliver `sig` to every process of the cgroup, race-free against fork."""
        if sig == 9 and self.use_kill:
            try:
                _write(os.path.join(self.path, "cgroup.kill"), b"1")
            except OSError as e:
                if e.errno not in (errno.ENODEV, errno.ENOENT):
                    raise
                self.gone = True
            return
        frozen = self._freeze(True)
        seen = set()
        try:
            while True:
                new = [pid for pid in self.pids() if pid not in seen]
                for pid in new:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                seen.update(new)
                if frozen or not new:
                    break       # a frozen cgroup cannot grow: one pass reaches all
        finally:
            self._freeze(False)

    def close(self):
        """Remove the (empty) cgroup directory; a busy one is left for `reaper gc`."""
        os.close(self.events_fd)
        _rmdir_quiet(self.path)
        if self.lock_fd is not None:
            os.close(self.lock_fd)


def _rmdir_quiet(path):
    try:
        os.rmdir(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def remove_tree(path, wait_s=2.0):
    """Kill everything in `path` and below, wait until empty, remove the directories."""
    if not os.path.isdir(path):
        return True
    job = JobCgroup(path)
    try:
        job.signal_all(9)
        poller = select.poll()
        poller.register(job.events_fd, select.POLLPRI)
        deadline = time.monotonic() + wait_s
        while job.populated() and time.monotonic() < deadline:
            poller.poll(max(0.0, deadline - time.monotonic()) * 1000)
            job.signal_all(9)
    finally:
        os.close(job.events_fd)
    for root, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            _rmdir_quiet(os.path.join(root, d))
    return _rmdir_quiet(path)


def collect_stale(parent):
    """Kill and remove job cgroups under `parent` whose supervisor is gone.

    A live supervisor holds an flock on its job's cgroup directory, and the
    kernel drops it when the supervisor dies, however it dies.  So a job cgroup
    whose lock can be taken is stale.  Unlike a pid in the name, this holds
    across pid namespaces and pid reuse.  Cheap enough for every `reaper exec`:
    one open and one flock per job cgroup under the parent.
    """
    removed = []
    try:
        entries = os.listdir(parent)
    except OSError:
        return removed
    for name in entries:
        if not name.startswith(JOB_PREFIX):
            continue
        path = os.path.join(parent, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue        # its supervisor is alive
        try:
            if remove_tree(path):
                removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed
