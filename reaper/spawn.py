"""Starting the job's first process: fork, set up, exec.

The job's first process must be inside the job's cgroup before it execs (a
parent that writes the pid into cgroup.procs afterwards loses to a fast double
fork).  Best is to be born there: clone3(CLONE_INTO_CGROUP) (Linux >= 5.7).
Writing cgroup.procs instead takes cgroup_threadgroup_rwsem for writing, which
waits for an RCU grace period: 8-12 ms on the development machine, against
well under 1 ms for clone3.  Python has no clone3: reaper's own C extension
reaper._linux (reaper/_linux.c, built at install time) calls it with
CPython's fork hooks around it, like os.fork().  Where the extension is missing
(a checkout run from PYTHONPATH) or REAPER_CLONE3_CTYPES is set, clone3 is
called through ctypes instead (~2 ms of imports, cgroup mode only).  Either
way the child continues in Python, single-threaded, and execs soon.  Where
clone3 is refused (kernels < 5.7, seccomp profiles of container runtimes answer
ENOSYS) or REAPER_NO_CLONE3 is set, the child forks normally and joins by
writing "0" to cgroup.procs itself, still before exec.

spawn(..., want_pidfd=True) returns (pid, pidfd) instead of pid: the pidfd
comes from CLONE_PIDFD when the child was cloned by clone3, else from
pidfd_open(pid) right after fork (safe: the child cannot be reaped before
spawn returns, so its pid cannot have been reused); it is None where the
kernel has no pidfds (< 5.3).  The caller owns it (close-on-exec).

Where the extension is built (x86_64), the job is started as posix_spawn(3)
starts one instead: reaper._linux.spawn does clone3 with CLONE_VM |
CLONE_VFORK (and CLONE_INTO_CGROUP in cgroup mode), and the child does the
set-up below in C on a small stack of its own, then execs.  No page table of
the interpreter is copied, nothing is copied on write, and no Python runs in
the child: measured in a reaper process on the shared 2-CPU development
machine (load 4-8), 0.3 ms from the call until the job has exec'ed, against
0.6-1.6 ms for fork + Python set-up + exec, more the busier the machine: the
forked child waits for a CPU to run Python (bench/RESULTS.md).  The Python child below remains for --pidns (its init is Python), for
REAPER_NO_CLONE3 / REAPER_CLONE3_CTYPES, for a missing extension, and where
clone3 is refused.

The rest of the set-up happens in the child between fork and exec too: it
starts its own session, or at a terminal its own process group which it makes
the foreground one, asks for PR_SET_PDEATHSIG, restores the signal state reaper
changed, and execs.  prctl() comes from the same extension where it is built
(python-prctl's _prctl links libcap and costs ~0.3 ms more to import), else
from python-prctl; the supervisor uses it too.  The PATH search is done here,
not by os.execvp: that one imports `warnings` (~1 ms, in the child, on the
critical path of every start) just to silence a BytesWarning.  The parent
lists the candidates before fork; the child tries them in order with execv(),
with execvp's error rules.

subprocess is deliberately not used: importing it costs ~15 ms, and its
Popen.wait() would compete with the supervisor's waitpid(-1) for exit statuses.
Failures in the child are reported to the parent as `stage errno` over a
close-on-exec pipe; EOF with no data means exec succeeded.

Signals are blocked across fork so a signal arriving in the gap is neither run
by a Python handler in the child nor lost: the child resets dispositions and
then unblocks, so a pending TERM acts on it with its default meaning.
"""

import errno
import os
import _signal

try:
    from reaper import _linux
    from reaper._linux import prctl     # reaper's C extension: no libcap, ~0.3 ms less
except ImportError:
    _linux = None
    from _prctl import prctl            # python-prctl

from reaper.errors import EXIT_FAILURE, EXIT_NOEXEC, EXIT_NOTFOUND, ReaperError

ALL_SIGNALS = _signal.valid_signals()


PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
CLONE_INTO_CGROUP = 0x200000000
CLONE_PIDFD = 0x1000
SYS_CLONE3 = 435        # the same number on every architecture (unified table)
# clone3 answers these where it cannot do what is asked: fork + cgroup.procs instead.
CLONE3_UNSUPPORTED = (errno.ENOSYS, errno.EPERM, errno.E2BIG, errno.EINVAL)


def clone3_backend():
    """How clone3 is reached: "extension", "ctypes", or None (REAPER_NO_CLONE3)."""
    if os.environ.get("REAPER_NO_CLONE3"):
        return None
    if not os.environ.get("REAPER_CLONE3_CTYPES"):
        try:
            from reaper import _linux  # noqa: F401
            return "extension"
        except ImportError:
            pass
    return "ctypes"


def _clone_into_cgroup(cgroup_fd, want_pidfd):
    """fork() with the child born inside the cgroup open at `cgroup_fd`.

    Returns (pid, pidfd or -1), (0, -1) in the child, or None if clone3 cannot
    do it here (the caller forks instead).
    """
    backend = clone3_backend()
    if backend is None:
        return None
    try:
        if backend == "extension":
            from reaper import _linux
            return _linux.clone_into_cgroup(cgroup_fd, want_pidfd)
        return _clone_ctypes(cgroup_fd, want_pidfd)
    except OSError as e:
        if e.errno in CLONE3_UNSUPPORTED:
            return None
        raise


def _clone_ctypes(cgroup_fd, want_pidfd):
    import ctypes

    class CloneArgs(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint64) for name in (
            "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack",
            "stack_size", "tls", "set_tid", "set_tid_size", "cgroup")]

    pidfd = ctypes.c_int(-1)
    flags = CLONE_INTO_CGROUP | (CLONE_PIDFD if want_pidfd else 0)
    args = CloneArgs(flags=flags, pidfd=ctypes.addressof(pidfd),
                     exit_signal=_signal.SIGCHLD, cgroup=cgroup_fd)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    pid = libc.syscall(ctypes.c_long(SYS_CLONE3), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return pid, (pidfd.value if pid and want_pidfd else -1)


def _exec_candidates(cmd):
    """The paths os.execvp would try for `cmd`, in order (PATH from the environment)."""
    if "/" in cmd:
        return [cmd]
    path = os.environ.get("PATH")
    dirs = (os.defpath if path is None else path).split(os.pathsep)
    return [os.path.join(d, cmd) for d in dirs]


def _pidfd_of(pid):
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None     # no pidfds here (Python < 3.9, Linux < 5.3, seccomp)


def spawn(argv, cgroup_procs=None, cgroup_fd=None, tty_fd=None, foreground=False,
          reset_signals=(), ignored_signals=(), pdeathsig=_signal.SIGKILL,
          before_exec=None, want_pidfd=False):
    """Fork and exec `argv`; return the child's pid once exec has succeeded.

    With want_pidfd, return (pid, pidfd) instead: pidfd is a close-on-exec
    pidfd of the child, owned by the caller, or None where pidfds are missing.

    cgroup_fd: the job cgroup's directory, to be born in (clone3).
    cgroup_procs: path of the job cgroup's cgroup.procs, joined before exec
        when clone3 is not available.
    tty_fd: the controlling terminal; the child gets its own process group in
        reaper's session (made foreground when `foreground`) instead of setsid.
    reset_signals: signals to set back to SIG_DFL in the child.
    ignored_signals: signals to set to SIG_IGN (ignored when reaper started).
    before_exec: optional callable run in the child last (e.g. a pid namespace init).
    """
    parent = os.getpid()
    candidates = _exec_candidates(argv[0]) if argv and argv[0] else [argv[0] if argv else ""]
    if before_exec is None and not ignored_signals:
        started = _vspawn(argv, candidates, cgroup_fd, tty_fd, foreground, reset_signals, pdeathsig,
                          parent, want_pidfd)
        if started is not None:
            return started
    try:
        rfd, wfd = os.pipe()
    except OSError as e:
        raise ReaperError(f"cannot create the start-up pipe: {e.strerror} (check ulimit -n)")
    old_mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, ALL_SIGNALS)
    pidfd = -1
    try:
        cloned = None if cgroup_fd is None else _clone_into_cgroup(cgroup_fd, want_pidfd)
        if cloned is None:
            pid = os.fork()
        else:
            pid, pidfd = cloned
            if pid == 0:
                cgroup_procs = None     # born inside the cgroup already
    except OSError as e:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
        os.close(rfd)
        os.close(wfd)
        raise ReaperError(f"cannot fork: {e.strerror}")
    if pid == 0:
        os.close(rfd)
        _child(argv, candidates, wfd, parent, old_mask, cgroup_procs, tty_fd, foreground,
               reset_signals, ignored_signals, pdeathsig, before_exec)
    if want_pidfd and pidfd < 0:
        pidfd = _pidfd_of(pid)      # the child is un-reaped: its pid is still its own
    _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
    os.close(wfd)
    report = b""
    while True:
        chunk = os.read(rfd, 512)
        if not chunk:
            break
        report += chunk
    os.close(rfd)
    if not report:
        return (pid, pidfd) if want_pidfd else pid
    if pidfd is not None and pidfd >= 0:
        os.close(pidfd)
    os.waitpid(pid, 0)
    stage, _, err = report.decode().partition(" ")
    raise _failure(stage, int(err), argv[0])


def _vspawn(argv, candidates, cgroup_fd, tty_fd, foreground, reset_signals, pdeathsig, parent,
            want_pidfd):
    """spawn() through reaper._linux.spawn (clone3 with CLONE_VM | CLONE_VFORK), or None.

    None: the extension is missing, this is not x86_64, clone3 is refused, or
    an argument holds a NUL byte: spawn() then forks (and says what it said
    before about each of those).
    """
    if clone3_backend() != "extension" or not hasattr(_linux, "spawn"):
        return None
    try:
        encoded = [os.fsencode(c) for c in candidates], [os.fsencode(a) for a in argv]
    except (TypeError, UnicodeError):
        return None
    if any(b"\0" in x for part in encoded for x in part):
        return None
    try:
        pid, pidfd, stage, err = _linux.spawn(
            encoded[0], encoded[1], -1 if cgroup_fd is None else cgroup_fd, want_pidfd,
            -1 if tty_fd is None else tty_fd, foreground, list(reset_signals), pdeathsig or 0, parent)
    except OSError as e:
        if e.errno in CLONE3_UNSUPPORTED:
            return None
        raise ReaperError(f"cannot fork: {e.strerror}")
    if stage is not None:
        if pidfd >= 0:
            os.close(pidfd)
        os.waitpid(pid, 0)
        raise _failure(stage, err, argv[0])
    if not want_pidfd:
        return pid
    return pid, (pidfd if pidfd >= 0 else _pidfd_of(pid))


def _failure(stage, err, cmd):
    reason = os.strerror(err)
    if stage == "exec":
        if err in (2, 20):      # ENOENT, ENOTDIR
            return ReaperError(f"{cmd!r}: command not found" if not cmd else f"{cmd}: command not found", EXIT_NOTFOUND)
        return ReaperError(f"{cmd}: cannot execute: {reason}", EXIT_NOEXEC)
    if stage == "cgroup":
        return ReaperError(f"cannot move the job into its cgroup: {reason}")
    if not err:
        return ReaperError(f"cannot start the job ({stage})")
    return ReaperError(f"cannot start the job ({stage}): {reason}")


def _child(argv, candidates, wfd, parent, old_mask, cgroup_procs, tty_fd, foreground,
           reset_signals, ignored_signals, pdeathsig, before_exec):
    stage = "setup"
    try:
        _signal.set_wakeup_fd(-1)
        for sig in reset_signals:
            _signal.signal(sig, _signal.SIG_DFL)
        for sig in ignored_signals:
            _signal.signal(sig, _signal.SIG_IGN)
        if cgroup_procs:
            stage = "cgroup"
            fd = os.open(cgroup_procs, os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)
        stage = "session"
        if tty_fd is None:
            os.setsid()
        else:
            os.setpgid(0, 0)
            if foreground:
                # We are a background group until this call: ignore SIGTTOU for it.
                old = _signal.signal(_signal.SIGTTOU, _signal.SIG_IGN)
                os.tcsetpgrp(tty_fd, os.getpid())
                _signal.signal(_signal.SIGTTOU, old)
        stage = "pdeathsig"
        if pdeathsig:
            prctl(PR_SET_PDEATHSIG, pdeathsig)
            # reaper died before we asked?  (In a new pid namespace the
            # parent is outside it and getppid() is 0: nothing to compare.)
            if os.getppid() not in (parent, 0):
                os._exit(EXIT_FAILURE)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
        if before_exec is not None:
            stage = "init"
            os._exit(before_exec(wfd))
        stage = "exec"
        _execvp(candidates, argv)
    except BaseException as e:
        # An empty command name raises ValueError before execve(): it is not found.
        err = errno.ENOENT if isinstance(e, ValueError) and stage == "exec" else (
            getattr(e, "errno", None) or 0)
        code = EXIT_NOTFOUND if stage == "exec" and err in (2, 20) else (
            EXIT_NOEXEC if stage == "exec" else EXIT_FAILURE)
        try:
            os.write(wfd, f"{stage} {err}".encode())
        finally:
            os._exit(code)


def _execvp(candidates, argv):
    """execv each candidate in turn; raise what os.execvp would raise."""
    saved = last = None
    for path in candidates:
        try:
            os.execv(path, argv)
        except (FileNotFoundError, NotADirectoryError) as e:
            last = e
        except OSError as e:
            last = e
            if saved is None:
                saved = e
    raise saved or last
