"""Starting the job's first process: fork, set up, exec.

The child does its own set-up between fork and exec, because only the child
can do it without a race: it joins the job's cgroup *before* exec (a parent
that writes the pid into cgroup.procs afterwards loses to a fast double fork),
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

import os
import _signal

import _prctl

from reaper.errors import EXIT_FAILURE, EXIT_NOEXEC, EXIT_NOTFOUND, ReaperError

ALL_SIGNALS = _signal.valid_signals()


def spawn(argv, cgroup_procs=None, tty_fd=None, foreground=False,
          reset_signals=(), ignored_signals=(), pdeathsig=_signal.SIGKILL,
          before_exec=None):
    """Fork and exec `argv`; return the child's pid once exec has succeeded.

    cgroup_procs: path of the job cgroup's cgroup.procs, joined before exec.
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
        pid = os.fork()
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
            return ReaperError(f"{cmd}: command not found", EXIT_NOTFOUND)
        return ReaperError(f"{cmd}: cannot execute: {reason}", EXIT_NOEXEC)
    if stage == "cgroup":
        return ReaperError(f"cannot move the job into its cgroup: {reason}")
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
    except OSError as e:
        code = EXIT_NOTFOUND if stage == "exec" and e.errno in (2, 20) else (
            EXIT_NOEXEC if stage == "exec" else EXIT_FAILURE)
        try:
            os.write(wfd, f"{stage} {e.errno or 0}".encode())
        finally:
            os._exit(code)
    except BaseException:
        os._exit(EXIT_FAILURE)
