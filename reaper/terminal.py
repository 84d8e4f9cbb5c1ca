"""The controlling terminal: who owns the foreground, and job control.

At a terminal a job cannot have a session of its own (a process in another
session can never be the terminal's foreground group), so it gets its own
process group inside reaper's session instead, and becomes the foreground
group when reaper itself was in the foreground.  reaper then behaves like a
shell towards the job and like a job towards the shell that started it:

- Ctrl-Z stops the job (the tty sends SIGTSTP to its group); reaper sees the
  stop, takes the terminal back and stops itself with the same signal, so the
  shell regains the terminal and reports the job as stopped.
- `fg` makes reaper's group the foreground and sends it SIGCONT; reaper hands
  the foreground on to the job and continues it.
- Started in the background, the job's reads from the terminal raise SIGTTIN
  exactly as they would without reaper.

The terminal is fd 0 when it is reaper's controlling terminal (tcgetpgrp
succeeds).  reaper ignores SIGTTOU so that it may call tcsetpgrp while in the
background (termios(3), "tcsetpgrp").
"""

import os
import _signal

JOB_CONTROL_STOPS = (_signal.SIGTSTP, _signal.SIGTTIN, _signal.SIGTTOU)


class Terminal:
    def __init__(self, fd=0):
        self.fd = None
        self.foreground = False
        try:
            owner = os.tcgetpgrp(fd)
        except OSError:
            return      # not a tty, or not our controlling terminal
        self.fd = fd
        self.own_group = os.getpgrp()
        self.foreground = owner == self.own_group
        _signal.signal(_signal.SIGTTOU, _signal.SIG_IGN)

    def _give(self, pgid):
        try:
            os.tcsetpgrp(self.fd, pgid)
        except OSError:
            pass        # the terminal went away (hangup): nothing to hand over

    def _in_foreground(self):
        try:
            return os.tcgetpgrp(self.fd) == self.own_group
        except OSError:
            return False

    def suspend_like(self, job_pgid, stop_sig):
        """The job stopped for job control: stop reaper too, then resume the job."""
        if self._in_foreground():
            self._give(self.own_group)
        old = _signal.signal(stop_sig, _signal.SIG_DFL)
        os.kill(os.getpid(), stop_sig)      # returns once the shell sends SIGCONT
        _signal.signal(stop_sig, old)
        if self._in_foreground():
            self._give(job_pgid)
        try:
            os.killpg(job_pgid, _signal.SIGCONT)
        except ProcessLookupError:
            pass

    def restore(self, job_pgid):
        """Give the foreground back to reaper's group if the job still holds it."""
        if self.fd is None:
            return
        try:
            if os.tcgetpgrp(self.fd) == job_pgid:
                self._give(self.own_group)
        except OSError:
            pass
