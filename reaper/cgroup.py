"""cgroup v2: finding the hierarchy, and the job's own cgroup directory.

This module owns every read and write under the cgroup2 mount.  It never
assumes `/sys/fs/cgroup`: the mount is found in /proc/self/mountinfo (the last
cgroup2 entry wins, because a container that mounts its own cgroup2 over the
host's lists both and only the last one is visible at the path) and the
process's place in the hierarchy comes from the `0::` line of /proc/self/cgroup.

Where job cgroups go is decided in exactly one place, reaper.containment.probe():
by default reaper's own cgroup (`default_parent()`), unless systemd owns it
and has not delegated it (reaper.delegation).

Killing follows Documentation/admin-guide/cgroup-v2.rst:
- `cgroup.kill` (Linux >= 5.14) SIGKILLs every task, including ones forking
  concurrently; the root cgroup has no such file, child cgroups do.
- Without it: freeze (`cgroup.freeze`), read `cgroup.procs`, signal each pid,
  thaw, and repeat until nothing is listed.  A frozen task cannot fork or exit
  (except by SIGKILL), so the pids read are not reused under our feet.
- `cgroup.events` is pollable: POLLPRI fires when `populated` or `frozen`
  changes (the kernel rate-limits these notifications to about one per 10 ms).
A cgroup that vanished counts as empty.

Ownership and liveness (for `reaper gc` and the housekeeping of every exec):
each job cgroup carries the xattr `user.reaper` = "PIDNS PID STARTTIME" of its
supervisor (user xattrs on cgroupfs: Linux >= 5.7).  A directory without it was
not made by reaper and is never touched.  The supervisor is alive when that
pid, in that pid namespace, still has that start time, which a job cannot fake
by holding a lock.  The flock on the directory stays, as the only evidence
across pid namespaces.

A root job can write reaper's own pid into the job cgroup; freezing or
cgroup.kill would then hit reaper.  evict_self() moves reaper back to the
cgroup it started in before either (a job racing it at that moment is not
prevented: --pidns hides reaper's pid from the job).
"""

import errno
import fcntl
import os
import select
import time

from reaper import procfs
from reaper.errors import ReaperError

JOB_PREFIX = "reaper."
MARK = "user.reaper"
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
    """This process's cgroup v2 path relative to the hierarchy root, e.g. '/user.slice/x'.

    Read on every check of whether the job is empty (evict_self()), so with
    one read(2), not a buffered file object (seven system calls).
    """
    try:
        fd = os.open(proc_cgroup, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 1 << 16)     # one line per hierarchy: far less
        finally:
            os.close(fd)
    except OSError:
        return None
    for line in data.split(b"\n"):
        if line.startswith(b"0::"):
            return os.fsdecode(line[3:])
    return None


def dir_of(mount, mount_root, rel):
    """The directory of cgroup `rel` (as /proc/PID/cgroup names it), or None if not visible."""
    if not mount or rel is None or rel.startswith("/.."):
        return None     # outside our cgroup namespace (e.g. after nsenter): not reachable
    root = mount_root or "/"
    if root != "/":
        if not (rel == root or rel.startswith(root + "/")):
            return None
        rel = rel[len(root):]
    path = os.path.normpath(mount + "/" + rel.lstrip("/"))
    return path if os.path.isdir(path) else None


def _pidns():
    return os.stat("/proc/self/ns/pid").st_ino


def supervisor_mark():
    return f"{_pidns()} {os.getpid()} {procfs.start_time('self')}".encode()


def supervisor_alive(path, own_ns):
    """Is the supervisor of job cgroup `path` alive?  None: `path` is not reaper's.

    own_ns: this process's pid namespace (_pidns()).  A supervisor in another
    pid namespace cannot be named by its pid from here: then "other" is
    returned, and only the directory's lock can tell (collect_stale() takes it).
    """
    try:
        pidns, pid, start = os.getxattr(path, MARK).decode().split()
        same_ns = int(pidns) == own_ns
    except (OSError, ValueError, UnicodeError):
        return None
    if same_ns:
        return pid.isdigit() and procfs.start_time(int(pid)) == int(start)
    return "other"


class Hierarchy:
    """The cgroup2 hierarchy as this process sees it."""

    def __init__(self, mountinfo="/proc/self/mountinfo"):
        self.mount, self.mount_root, self.read_only, v1 = find_mount(mountinfo)
        self.own = own_path()
        self.layout = "none" if not self.mount else ("hybrid" if v1 else "unified")

    @property
    def outside_namespace(self):
        """Is this process's cgroup outside its cgroup namespace?

        The kernel then prints it relative to the namespace's root with '..'
        components (/proc/self/cgroup reads `0::/../..`, e.g. after `nsenter`
        into a container without its cgroup namespace), and refuses to move
        processes from there into the namespace's cgroups (cgroup_procs_write_permission).
        """
        return self.own is not None and ".." in self.own.split("/")

    def dir_of(self, rel):
        """Directory of the cgroup at hierarchy path `rel` ('/a.slice/b'), or None if not visible."""
        return dir_of(self.mount, self.mount_root, rel)

    def own_dir(self):
        """Directory of this process's own cgroup, or None if it is not visible."""
        return self.dir_of(self.own)

    def default_parent(self):
        """reaper's own cgroup: where job cgroups go unless systemd says otherwise (containment.probe)."""
        return self.own_dir()

    def check_parent(self, path):
        """Resolve a user-supplied parent; return its directory.

        Accepted: a directory under the cgroup2 mount (/sys/fs/cgroup/x), a
        path relative to the mount (x), or a path in the hierarchy as
        /proc/self/cgroup, `systemctl status` and `systemd-cgls` print it
        (/user.slice/x), resolved against the mount's root.
        """
        if not self.mount:
            raise ReaperError("no cgroup2 hierarchy is mounted (see `reaper doctor`)")
        if ".." in path.split("/"):
            raise ReaperError(f"cgroup parent must not contain '..': {path}")
        mount = self.mount.rstrip("/") or "/"
        given = path
        if not path.startswith("/"):
            path = mount + "/" + path
        path = os.path.normpath(path)
        if path != mount and not path.startswith(mount + "/"):
            resolved = self.dir_of(path)     # the form systemd prints
            if resolved is None:
                raise ReaperError(f"cgroup parent {given} is neither under the cgroup2 mount {self.mount} "
                                  f"nor an existing cgroup of its hierarchy")
            path = resolved
        if not os.path.isdir(path):
            raise ReaperError(f"cgroup parent {path} does not exist")
        inside = _enclosing_job(self.mount, path)
        if inside:
            raise ReaperError(f"cgroup parent {path} is inside the job cgroup {inside} (jobs do not nest)")
        return path


def _enclosing_job(mount, path):
    """The job cgroup of reaper's that `path` is in (or is), or None."""
    while len(path) > len(mount):
        if os.path.basename(path).startswith(JOB_PREFIX):
            try:
                os.getxattr(path, MARK)
                return path
            except OSError:
                pass
        path = os.path.dirname(path)
    return None


def move_blocker(source, destination):
    """The cgroup whose cgroup.procs stops a move from `source` into `destination`, or None.

    Moving a process needs write access to cgroup.procs of the common
    ancestor of both cgroups (cgroup-v2.rst, "Delegation Containment"); e.g. a
    user's SSH session scope and their user@.service subtree meet in
    user-UID.slice, which is root's.
    """
    common = os.path.commonpath([source, destination])
    if os.access(os.path.join(common, "cgroup.procs"), os.W_OK):
        return None
    return common


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


def write(path, data):
    """Write a cgroup control file in one write(2), as the kernel wants it (bytes or str)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data.encode() if isinstance(data, str) else data)
    finally:
        os.close(fd)


def enable_controllers(path, controllers):
    """Give `path`'s children these controllers (its cgroup.subtree_control); OSError if refused."""
    write(os.path.join(path, "cgroup.subtree_control"), " ".join("+" + c for c in controllers))


class JobCgroup:
    """One job's cgroup directory: created before the job, removed after it."""

    def __init__(self, path, lock_fd=None, home=None):
        self.path = path
        self.lock_fd = lock_fd
        self.home = home        # (mount, mount root, directory reaper started in or None)
        self.rel = None         # the path as /proc/PID/cgroup names it
        if home is not None:
            mount, root = home[0], home[1] or "/"
            self.rel = os.path.normpath(root + "/" + path[len(mount):]).replace("//", "/")
        self.use_kill = has_kill(path)
        self.events_fd = os.open(os.path.join(path, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
        self.gone = False

    @classmethod
    def create(cls, parent, name, home=None):
        """Make `reaper.<pid>.<name>` (or `.<n>` after it if taken), mark it ours and lock it.

        The pid alone is not unique: reapers that are PID 1 of different pid
        namespaces may share a parent.  The mark is written before anything
        could treat the directory as a job's (see supervisor_alive()).
        """
        base = os.path.join(parent, f"{JOB_PREFIX}{os.getpid()}.{name}")
        mark = supervisor_mark()
        for n in range(100):
            path = base if n == 0 else f"{base}.{n}"
            try:
                os.mkdir(path)
            except (FileExistsError, FileNotFoundError):
                continue
            try:
                _mark(path, mark)
                lock_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                _rmdir_quiet(path)
                raise
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return cls(path, lock_fd, home)
            except OSError:
                os.close(lock_fd)
                _rmdir_quiet(path)
                raise
        raise OSError(errno.EEXIST, "too many job cgroups with this name", base)

    def evict_self(self):
        """If the job moved reaper into its cgroup, move reaper back where it started."""
        if self.home is None or self.home[2] is None:
            return
        mount, root, home_dir = self.home
        here = dir_of(mount, root, own_path())
        if here is None or not (here == self.path or here.startswith(self.path + "/")):
            return
        try:
            write(os.path.join(home_dir, "cgroup.procs"), b"0")
        except OSError as e:
            raise ReaperError(f"the job moved reaper into its own cgroup and reaper cannot leave it: "
                              f"{e.strerror}")

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
        if not self.events().get("populated", 0):
            return False
        self.evict_self()       # reaper itself must never count as the job
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
            write(os.path.join(self.path, "cgroup.freeze"), b"1" if frozen else b"0")
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
        self.evict_self()
        if sig == 9 and self.use_kill:
            try:
                write(os.path.join(self.path, "cgroup.kill"), b"1")
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


def _mark(path, mark):
    try:
        os.setxattr(path, MARK, mark)
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # No user xattrs (Linux < 5.7): the job runs, but gc will not touch it.


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

    Only directories carrying reaper's mark are considered, and a supervisor
    is dead when its pid no longer has its start time (supervisor_alive()), so
    a job that takes its cgroup's lock cannot keep itself alive.  Cheap enough
    for every `reaper exec`: a getxattr and a read of /proc/PID/stat per job
    cgroup; only a dead one's directory is opened.
    """
    removed = []
    try:
        entries = os.listdir(parent)
    except OSError:
        return removed
    try:
        own_ns = _pidns() if any(n.startswith(JOB_PREFIX) for n in entries) else None
    except OSError:
        own_ns = None       # no /proc: every mark looks foreign, only the locks can tell
    for name in entries:
        if not name.startswith(JOB_PREFIX):
            continue
        path = os.path.join(parent, name)
        alive = supervisor_alive(path, own_ns)
        if alive is None or alive is True:
            continue        # not reaper's, or alive: not even opened
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if alive == "other":    # another pid namespace: dead only if its lock is free
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if remove_tree(path):
                removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed
