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

    def __init__(self, path):
        self.path = path
        self.use_kill = has_kill(path)
        self.events_fd = os.open(os.path.join(path, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
        self._events_cache = None

    @classmethod
    def create(cls, parent, name):
        path = os.path.join(parent, f"{JOB_PREFIX}{os.getpid()}.{name}")
        try:
            os.mkdir(path)
        except FileExistsError:
            # Our pid was reused after an earlier reaper died: its cgroup is stale.
            remove_tree(path)
            os.mkdir(path)
        try:
            return cls(path)
        except OSError:
            _rmdir_quiet(path)
            raise

    @property
    def procs_file(self):
        return os.path.join(self.path, "cgroup.procs")

    def events(self):
        """Parse cgroup.events; reading also re-arms POLLPRI.  Vanished = empty."""
        try:
            raw = os.pread(self.events_fd, 4096, 0)
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
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
                return []
            raise

    def _freeze(self, frozen):
        try:
            _write(os.path.join(self.path, "cgroup.freeze"), b"1" if frozen else b"0")
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
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


def supervisor_pid(name):
    """The pid encoded in a job cgroup name `reaper.<pid>.<job name>`, or None."""
    if not name.startswith(JOB_PREFIX):
        return None
    pid = name[len(JOB_PREFIX):].partition(".")[0]
    return int(pid) if pid.isdigit() else None


def _supervisor_alive(pid, path, thorough):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if not thorough:
        return True
    # The pid exists, but it may have been reused.  A live supervisor holds
    # cgroup.events of its job open, so look for that among its descriptors.
    try:
        if time.time() - os.stat(path).st_ctime < 1.0:
            return True     # just created: its supervisor may not have opened it yet
        fd_dir = f"/proc/{pid}/fd"
        for fd in os.listdir(fd_dir):
            try:
                if os.readlink(f"{fd_dir}/{fd}").startswith(path + "/"):
                    return True
            except OSError:
                continue
    except OSError:
        return True         # cannot tell: assume alive, never kill a live job
    return False


def collect_stale(parent, thorough=False):
    """Kill and remove job cgroups under `parent` whose supervisor is gone.

    The cheap form (thorough=False, run by every `reaper exec`) only checks that
    the pid in the name still exists; `reaper gc` also catches reused pids.
    """
    removed = []
    try:
        entries = os.listdir(parent)
    except OSError:
        return removed
    for name in entries:
        pid = supervisor_pid(name)
        if pid is None or pid == os.getpid():
            continue
        path = os.path.join(parent, name)
        if _supervisor_alive(pid, path, thorough):
            continue
        try:
            if remove_tree(path):
                removed.append(path)
        except OSError:
            continue
    return removed
