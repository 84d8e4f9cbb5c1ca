"""The job registry: which jobs are running, findable from any shell of the same user (or root).

Where: `/run/reaper/` for root, `$XDG_RUNTIME_DIR/reaper/` for other users, or
`/tmp/reaper-<uid>/` when XDG_RUNTIME_DIR is unset.  `REAPER_REGISTRY=BASE`
moves every registry to `BASE/<uid>/` (tests, unusual systems).  A registry
directory must be a real directory (not a symlink), owned by its user, with no
access for group or others; reaper creates it so and refuses anything else.
Every file operation goes through a descriptor of that verified directory
(`dir_fd=`), so a symlink swapped in later is never followed.

Per job, two files named after the job:
- `NAME.lock`: the name claim.  The supervisor opens it and takes an exclusive
  flock(2) before the job starts and keeps it until it exits; the kernel drops
  it however the supervisor dies.  Taking it fails while a live job holds the
  name, so two live jobs never share one.  A claim is re-checked after locking
  (the path must still name the locked inode), because a stale lock file may be
  unlinked concurrently by `reaper gc`, which unlinks only while holding it.
- `NAME.json`: the entry, written once the job has started (temporary file
  `NAME.json.tmp` + rename(2), so readers see a whole entry or none), and never
  replaced or truncated: see Registration.publish.  JSON is produced here
  and read with `_json`'s scanner: `json` imports and compiles `re` (~7 ms).
The entry names the supervisor's control socket, an abstract unix socket
(reaper.control), so no socket file lives here.

Liveness, never trusted from the files alone (a dead supervisor's pid may be
reused, and any process of the same user can write files here and lock them):
`pin()` opens a pidfd for the recorded supervisor pid, then requires, in this
order, the recorded boot id (/proc/sys/kernel/random/boot_id), the recorded
start time (field 22 of /proc/PID/stat, read after the pidfd exists, so the
pidfd holds exactly the process that was checked), the entry file's owner as the
process's uid (owner of /proc/PID), and the pinned process itself as the holder of the flock on
`NAME.lock` in /proc/locks.  A forger can hold that lock, but cannot make the
kernel list another process as its holder, so a forged or stale entry never
looks alive.  Everything done to a job afterwards goes through that pidfd
(pidfd_send_signal, poll for exit) or through the supervisor itself.

Entries record the pid namespace too: from another pid namespace the pid means
nothing, so such entries are reported as not visible rather than guessed at.
"""

import errno
import fcntl
import os
import stat
import time

from reaper import procfs
from reaper.errors import EXIT_FAILURE, EXIT_NO_JOB, ReaperError

ENTRY_SUFFIX = ".json"
TMP_SUFFIX = ".tmp"
LOCK_SUFFIX = ".lock"
VERSION = 1
MAX_ENTRY_BYTES = 1 << 20
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class NameTaken(ReaperError):
    pass


class Stale(Exception):
    """An entry whose supervisor is gone (or cannot be verified): never acted upon.

    dead: the supervisor has certainly exited (so its cgroup may be collected);
    False when it merely cannot be verified (another pid namespace, a forged entry).
    """

    def __init__(self, reason, dead=True):
        super().__init__(reason)
        self.dead = dead


# -- facts about processes ----------------------------------------------------

def boot_id():
    return procfs.read("/proc/sys/kernel/random/boot_id").decode().strip()


def pidns_id(pid="self"):
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def proc_stat(pid):
    """Fields of /proc/PID/stat after the command name (reaper.procfs); OSError if gone."""
    st = procfs.fields(pid)
    if st is None:
        raise ProcessLookupError(f"no process {pid}")
    return st


def start_time(pid):
    """Start time in clock ticks since boot (field 22); with the boot id it names a process."""
    return int(proc_stat(pid)[19])


def process_uid(pid):
    """The owner of /proc/PID: the process's effective uid (root if it made itself
    non-dumpable).  One stat(2), against an open and a parse of /proc/PID/status."""
    return os.stat(f"/proc/{pid}").st_uid


def flock_holders():
    """{(major, minor, inode): set of pids} of every FLOCK in /proc/locks."""
    holders = {}
    try:
        lines = procfs.read("/proc/locks").splitlines()
    except OSError:
        return holders
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] != b"FLOCK":
            continue    # not a flock, or a blocked waiter ("-> FLOCK ...")
        try:
            pid = int(fields[4])
            major, minor, ino = fields[5].split(b":")
            key = (int(major, 16), int(minor, 16), int(ino))
        except ValueError:
            continue
        holders.setdefault(key, set()).add(pid)
    return holders


# -- where the registry lives -------------------------------------------------

def dir_for(uid=None):
    """This user's registry directory (not created here)."""
    uid = os.geteuid() if uid is None else uid
    base = os.environ.get("REAPER_REGISTRY")
    if base:
        return os.path.join(base, str(uid))
    if uid == 0:
        return "/run/reaper"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "reaper")
    return f"/tmp/reaper-{uid}"


def _check_dir_fd(fd, path, uid):
    st = os.fstat(fd)
    if st.st_uid != uid:
        raise ReaperError(f"registry {path} is owned by uid {st.st_uid}, not {uid}; not using it")
    if st.st_mode & 0o077:
        raise ReaperError(f"registry {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0700")


def open_dir(path=None, create=False):
    """Open and verify this user's registry directory; return its descriptor.

    Raises ReaperError (125) naming what is wrong: a symlink, another owner,
    loose permissions, a missing parent.  With create=False a missing
    directory raises FileNotFoundError (callers treat it as "no jobs").
    """
    uid = os.geteuid()
    path = path or dir_for(uid)
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:
            raise ReaperError(f"cannot create registry {path}: its parent directory does not exist")
        except OSError as e:
            raise ReaperError(f"cannot create registry {path}: {e.strerror}")
    try:
        fd = os.open(path, DIR_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ReaperError(f"registry {path} is not a directory (a symlink?); not using it")
        raise ReaperError(f"cannot open registry {path}: {e.strerror}")
    try:
        _check_dir_fd(fd, path, uid)
    except BaseException:
        os.close(fd)
        raise
    return fd


def visible_dirs():
    """[(path, owner uid)] of every registry this user may look at: its own; root: everyone's."""
    uid = os.geteuid()
    own = dir_for(uid)
    found = [(own, uid)]
    if uid != 0:
        return found
    base = os.environ.get("REAPER_REGISTRY")
    candidates = []
    if base:
        try:
            candidates = [(os.path.join(base, d), d) for d in os.listdir(base)]
        except OSError:
            pass
    else:
        try:
            candidates += [(f"/run/user/{d}/reaper", d) for d in os.listdir("/run/user")]
        except OSError:
            pass
        try:
            candidates += [(f"/tmp/{d}", d[len("reaper-"):]) for d in os.listdir("/tmp")
                           if d.startswith("reaper-")]
        except OSError:
            pass
    for path, owner in candidates:
        if not owner.isdigit() or path == own:
            continue
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == int(owner):
            found.append((path, int(owner)))
    return found


# -- writing: the supervisor's side -------------------------------------------

_ESCAPES = {i: f"\\u{i:04x}" for i in range(32)}
_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\", 0x7f: "\\u007f"})


def enc(text):
    """A JSON string literal: UTF-8 kept as is; controls, quotes, backslashes and
    lone surrogates (undecodable bytes in argv) escaped.  Not _json's encoder:
    one shared library less to load on every `reaper exec`."""
    text = text.translate(_ESCAPES)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join(f"\\u{ord(c):04x}" if "\ud800" <= c <= "\udfff" else c for c in text)
    return '"' + text + '"'


def _encode(value):
    """Minimal JSON for str/int/float/bool/None/list/dict."""
    if isinstance(value, str):
        return enc(value)
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_encode(v) for v in value) + "]"
    return "{" + ",".join(f"{enc(k)}:{_encode(v)}" for k, v in value.items()) + "}"


def _claim_name(dir_fd, name):
    """Lock NAME.lock; return the descriptor, or None if a live job holds it."""
    for _ in range(20):
        fd = os.open(name + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        mine = os.fstat(fd)
        try:
            now = os.stat(name + LOCK_SUFFIX, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)    # gc unlinked it between our open and our lock: try again
    raise ReaperError(f"cannot claim job name {name!r}: the registry keeps changing")


class Registration:
    """One job's presence in the registry, owned by its supervisor."""

    def __init__(self, name, explicit, path=None):
        """Claim a name before the job starts.

        explicit: the user chose the name (--name): taken means failure (125).
        Otherwise the first free of NAME, NAME-2, NAME-3, ... is used.
        """
        self.path = path or dir_for()
        self.dir_fd = open_dir(self.path, create=True)
        self.lock_fd = None
        self.identity = None
        try:
            for n in range(1, 2 if explicit else 1000):     # NAME, NAME-2, ... made one at a time
                candidate = name if n == 1 else f"{name}-{n}"
                try:
                    self.lock_fd = _claim_name(self.dir_fd, candidate)
                except OSError as e:
                    raise ReaperError(f"cannot claim job name {candidate!r} in {self.path}: {e.strerror}")
                if self.lock_fd is not None:
                    self.name = candidate
                    break
            else:
                if explicit:
                    raise NameTaken(f"--name {name}: a running job already has this name "
                                    f"(see `reaper ls`)", EXIT_FAILURE)
                raise ReaperError(f"no free job name left for {name!r}")
        except BaseException:
            os.close(self.dir_fd)
            raise

    def publish(self, fields, final=True):
        """Write the entry to NAME.json.tmp; with `final`, rename it to NAME.json.

        Before the job starts the supervisor only writes it (final=False), so that
        a registry that cannot be written fails a named job before it runs; once
        the job runs it writes the whole entry afresh and renames it into place.
        NAME.json is never renamed over nor truncated: ext4 (auto_da_alloc, the
        default) starts writeback of a file renamed over another or truncated and
        rewritten, and unlinking it at the end then waits for the disk -- measured
        with /run on ext4: unlink 3.6 ms median, up to 340 ms under load, against
        0.01 ms.  The temporary name needs no pid: the name lock makes its holder
        the only writer.
        """
        me = os.getpid()
        if self.identity is None:       # once: the second publish only adds the main pid
            self.identity = {"version": VERSION, "name": self.name, "uid": os.geteuid(), "pid": me,
                             "starttime": start_time(me), "boot_id": boot_id(), "pidns": pidns_id(),
                             "started": time.time()}
        entry = dict(self.identity)
        entry.update(fields)
        data = _encode(entry).encode() + b"\n"
        tmp = self.name + ENTRY_SUFFIX + TMP_SUFFIX
        _unlink_quiet(self.dir_fd, tmp)     # a new file each time, never a truncated one
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=self.dir_fd)
        except OSError as e:
            raise ReaperError(f"cannot write to registry {self.path}: {e.strerror}")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as e:
            os.close(fd)
            _unlink_quiet(self.dir_fd, tmp)
            raise ReaperError(f"cannot write to registry {self.path}: {e.strerror}")
        os.close(fd)
        if not final:
            return
        try:
            os.rename(tmp, self.name + ENTRY_SUFFIX, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except OSError as e:
            _unlink_quiet(self.dir_fd, tmp)
            raise ReaperError(f"cannot write to registry {self.path}: {e.strerror}")

    def close(self):
        """Remove the entry, the control socket and the lock file (still holding the lock)."""
        if self.dir_fd is None:
            return
        _unlink_quiet(self.dir_fd, self.name + ENTRY_SUFFIX)
        _unlink_quiet(self.dir_fd, self.name + ENTRY_SUFFIX + TMP_SUFFIX)
        _unlink_quiet(self.dir_fd, self.name + LOCK_SUFFIX)
        os.close(self.lock_fd)
        os.close(self.dir_fd)
        self.dir_fd = None


def _unlink_quiet(dir_fd, name):
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


# -- reading: everyone else's side --------------------------------------------

class Job:
    """A registry entry as read, and (after pin()) a pidfd of its live supervisor."""

    def __init__(self, entry, dir_path, owner, lock_key):
        self.entry = entry
        self.dir_path = dir_path
        self.owner = owner
        self.lock_key = lock_key
        self.pidfd = None
        self.stale_reason = None
        self.stale_dead = False

    name = property(lambda self: self.entry["name"])
    pid = property(lambda self: self.entry["pid"])
    main_pid = property(lambda self: self.entry.get("main_pid"))
    cgroup = property(lambda self: self.entry.get("cgroup"))
    alive = property(lambda self: self.pidfd is not None)

    def pin(self, holders=None, boot=None, pidns=None):
        """Verify the supervisor is the one that wrote the entry; keep a pidfd to it.

        Raises Stale with the reason otherwise.  See the module docstring.
        """
        e = self.entry
        if e.get("boot_id") != (boot or boot_id()):
            raise Stale("written before the last boot")
        if e.get("pidns") != (pidns or pidns_id()):
            raise Stale("its supervisor is in another pid namespace", dead=False)
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            raise Stale("its supervisor has exited")
        except OSError as e2:
            raise Stale(f"cannot pin its supervisor: {e2.strerror}", dead=False)
        try:
            if start_time(self.pid) != e.get("starttime"):
                raise Stale("its supervisor has exited (pid reused)")
            if process_uid(self.pid) != self.owner:
                raise Stale("its supervisor runs as another user than the entry's owner", dead=False)
            holders = flock_holders() if holders is None else holders
            if self.pid not in holders.get(self.lock_key, ()):
                raise Stale("its supervisor does not hold the name lock", dead=False)
        except (OSError, ValueError, IndexError):
            os.close(pidfd)
            raise Stale("its supervisor has exited")
        except Stale:
            os.close(pidfd)
            raise
        self.pidfd = pidfd
        return pidfd

    def close(self):
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class _Decoding:
    """What _json.make_scanner needs of a decoder: json.loads without importing
    json, whose decoder and encoder import and compile `re` (~6 ms, half of
    `reaper ls`'s own work with a handful of jobs)."""
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo = {}

    @staticmethod
    def parse_constant(name):
        raise ValueError(f"{name} is not valid JSON")


def loads(data):
    """json.loads for the registry's own entries (UTF-8 bytes, one object)."""
    from _json import make_scanner
    text = data.decode("utf-8").strip()
    try:
        value, end = make_scanner(_Decoding())(text, 0)
    except Exception:
        # Not well-formed: the C scanner's error path wants json.decoder and
        # (3.11) may fail with SystemError without it.  Let json say why.
        import json
        return json.loads(text)
    finally:
        _Decoding.memo.clear()
    if end != len(text):
        raise ValueError("trailing data")
    return value


def dumps(value):
    """Compact JSON (used for entries and for --json output)."""
    return _encode(value)


def _read_entry(dir_fd, dir_path, fname, owner):
    """Parse one NAME.json; None for anything that is not a sound entry of `owner`."""
    try:
        fd = os.open(fname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != owner or st.st_size > MAX_ENTRY_BYTES:
            return None
        data = os.read(fd, MAX_ENTRY_BYTES + 1)
    finally:
        os.close(fd)
    try:
        entry = loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(entry, dict) or entry.get("version") != VERSION:
        return None
    name = fname[:-len(ENTRY_SUFFIX)]
    if entry.get("name") != name or not isinstance(entry.get("pid"), int) or entry["pid"] <= 0:
        return None
    try:
        lock = os.stat(name + LOCK_SUFFIX, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        lock = None
    key = (os.major(lock.st_dev), os.minor(lock.st_dev), lock.st_ino) if lock else None
    return Job(entry, dir_path, owner, key)


def scan(include_stale=False, problems=None, name=None):
    """Every job visible to this user: pinned (alive) ones, plus stale ones if asked.

    A registry that is missing counts as empty; one that is unsafe is skipped
    and described in `problems` (a list) if given, else raised as ReaperError
    when it is this user's own.  With `name`, only entries of that name are read.
    """
    jobs = []
    holders = flock_holders()
    boot = boot_id()
    own_ns = pidns_id()
    own_uid = os.geteuid()
    for path, owner in visible_dirs():
        try:
            if owner == own_uid:
                dir_fd = open_dir(path)
            else:
                dir_fd = os.open(path, DIR_FLAGS)
                _check_dir_fd(dir_fd, path, owner)
        except FileNotFoundError:
            continue
        except (ReaperError, OSError) as e:
            if owner == own_uid:
                raise       # one's own registry must be sound; others' are reported
            if problems is not None:
                problems.append(str(e))
            continue
        try:
            fnames = [name + ENTRY_SUFFIX] if name is not None else sorted(os.listdir(dir_fd))
            for fname in fnames:
                if not fname.endswith(ENTRY_SUFFIX):
                    continue
                job = _read_entry(dir_fd, path, fname, owner)
                if job is None:
                    if name is not None:
                        continue
                    if problems is not None:
                        problems.append(f"{os.path.join(path, fname)}: not a valid entry; ignored")
                    continue
                try:
                    job.pin(holders, boot, own_ns)
                except Stale as s:
                    job.stale_reason = str(s)
                    job.stale_dead = s.dead
                    if not include_stale:
                        continue
                jobs.append(job)
        finally:
            os.close(dir_fd)
    return jobs


def lookup(name):
    """The live job called `name` (pinned), or ReaperError(EXIT_NO_JOB) saying why not."""
    found = scan(include_stale=True, name=name)
    live = [j for j in found if j.alive]
    for j in found:
        if j not in live[:1]:
            j.close()
    if live:
        return live[0]
    if found:
        raise ReaperError(f"no live job named {name!r}: {found[0].stale_reason} "
                          f"(`reaper gc` removes the entry)", EXIT_NO_JOB)
    whose = "" if os.geteuid() == 0 else f" among the jobs of uid {os.geteuid()}"
    raise ReaperError(f"no job named {name!r}{whose} (see `reaper ls`)", EXIT_NO_JOB)


def remove_stale(job):
    """Remove a stale job's files, if its name lock is free; True if removed."""
    try:
        dir_fd = os.open(job.dir_path, DIR_FLAGS)
    except OSError:
        return False
    try:
        name = job.name
        try:
            fd = os.open(name + LOCK_SUFFIX, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            fd = None
        except OSError:
            return False
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    return False    # someone holds the name again (a new job): leave it
            _unlink_quiet(dir_fd, name + ENTRY_SUFFIX)
            if fd is not None:
                _unlink_quiet(dir_fd, name + ENTRY_SUFFIX + TMP_SUFFIX)
                _unlink_quiet(dir_fd, name + LOCK_SUFFIX)
        finally:
            if fd is not None:
                os.close(fd)
        return True
    finally:
        os.close(dir_fd)
