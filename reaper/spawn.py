"""Starting the job's first process: fork, set up, exec.

The job's first process must be inside the job's cgroup before it execs (a
parent that writes the pid into cgroup.procs afterwards loses to a fast double
fork).  Best is to be born there: clone3(CLONE_INTO_CGROUP) (Linux >= 5.7).
Writing cgroup.procs instead takes cgroup_threadgroup_rwsem for writing, which
waits for an RCU grace period: 8-12 ms on the development machine, against
well under 1 ms for clone3.  Python has no clone3, so it is called through
ctypes (~2 ms to import, cgroup mode only) and behaves like fork(): the child
continues in Python, single-threaded, and execs soon.  Where clone3 is refused
(kernels < 5.7, seccomp profiles of container runtimes answer ENOSYS) or
REAPER_NO_CLONE3 is set, the child forks normally and joins by writing "0" to
cgroup.procs itself, still before exec.

The rest of the set-up happens in the child between fork and exec too: it
starts its own session, or at a terminal its own process group which it makes
the foreground one, asks for PR_SET_PDEATHSIG, restores the signal state reaper
changed, and execs.

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

import _prctl

from reaper.errors import EXIT_FAILURE, EXIT_NOEXEC, EXIT_NOTFOUND, ReaperError

ALL_SIGNALS = _signal.valid_signals()


CLONE_INTO_CGROUP = 0x200000000
SYS_CLONE3 = 435        # the same number on every architecture (unified table)


def _clone_into_cgroup(cgroup_fd):
    """fork(), with the child born inside the cgroup open at `cgroup_fd`; None if unsupported."""
    if os.environ.get("REAPER_NO_CLONE3"):
        return None
    import ctypes

    class CloneArgs(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint64) for name in (
            "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack",
            "stack_size", "tls", "set_tid", "set_tid_size", "cgroup")]

    args = CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=_signal.SIGCHLD, cgroup=cgroup_fd)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    pid = libc.syscall(ctypes.c_long(SYS_CLONE3), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
    if pid >= 0:
        return pid
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM, errno.E2BIG, errno.EINVAL):
        return None
    raise OSError(err, os.strerror(err))


def spawn(argv, cgroup_procs=None, cgroup_fd=None, tty_fd=None, foreground=False,
          reset_signals=(), ignored_signals=(), pdeathsig=_signal.SIGKILL,
          before_exec=None):
    """Fork and exec `argv`; return the child's pid once exec has succeeded.

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
    try:
        rfd, wfd = os.pipe()
    except OSError as e:
        raise ReaperError(f"cannot create the start-up pipe: {e.strerror} (check ulimit -n)")
    old_mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, ALL_SIGNALS)
    try:
        pid = None if cgroup_fd is None else _clone_into_cgroup(cgroup_fd)
        if pid is None:
            pid = os.fork()
        elif pid == 0:
            cgroup_procs = None     # born inside the cgroup already
    except OSError as e:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
        os.close(rfd)
        os.close(wfd)
        raise ReaperError(f"cannot fork: {e.strerror}")
    if pid == 0:
        os.close(rfd)
        _child(argv, wfd, parent, old_mask, cgroup_procs, tty_fd, foreground,
               reset_signals, ignored_signals, pdeathsig, before_exec)
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
        return pid
    os.waitpid(pid, 0)
    stage, _, err = report.decode().partition(" ")
    raise _failure(stage, int(err), argv[0])


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


def _child(argv, wfd, parent, old_mask, cgroup_procs, tty_fd, foreground,
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
            _prctl.prctl(_prctl.PR_SET_PDEATHSIG, pdeathsig)
            # reaper died before we asked?  (In a new pid namespace the
            # parent is outside it and getppid() is 0: nothing to compare.)
            if os.getppid() not in (parent, 0):
                os._exit(EXIT_FAILURE)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
        if before_exec is not None:
            stage = "init"
            os._exit(before_exec(wfd))
        stage = "exec"
        os.execvp(argv[0], argv)
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
