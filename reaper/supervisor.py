"""The supervisor: one event loop from the job's start until nothing of it is left.

It sleeps in poll(2) on at most two descriptors and wakes only for an event:
- the signal wakeup pipe (signal.set_wakeup_fd): every signal reaper receives,
  SIGCHLD included, arrives as a byte naming it, so handlers do nothing and
  all decisions are made here, in order;
- `cgroup.events` (POLLPRI) when the job's cgroup empties.
The only timeouts are the grace and --timeout deadlines, so an idle job costs
zero wake-ups.

All waiting happens here, with waitpid(-1): reaper is a child subreaper, so
orphans of the job are its children, and one reaper of exit statuses avoids the
status-stealing that a second waiter (subprocess.Popen) would suffer.  The job's
process group is signalled with killpg only while its leader is un-reaped;
after that the group id could be reused, and signals go through the
containment instead (frozen cgroup or stopped tree, both reuse-safe).

States: running -> (main exits) draining with --wait-all, else stopping;
running -> (TERM/INT/QUIT, --timeout) stopping -> (main gone, grace over,
second TERM/INT) killing -> collected.  If reaper itself fails, the job is
killed and collected before the error is reported.
"""

import os
import select
import _signal
import time

import _prctl

from reaper import spawn
from reaper.errors import EXIT_TIMEOUT, ReaperError
from reaper.terminal import JOB_CONTROL_STOPS, Terminal

FORWARDED = (_signal.SIGHUP, _signal.SIGINT, _signal.SIGQUIT, _signal.SIGUSR1,
             _signal.SIGUSR2, _signal.SIGTERM, _signal.SIGWINCH, _signal.SIGCONT)
STOPPING_SIGNALS = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGQUIT)
# Python ignores these at start-up; the job must get the default back.
PYTHON_IGNORES = (_signal.SIGPIPE, _signal.SIGXFSZ)
SIGKILL = _signal.SIGKILL

RUNNING, DRAINING, STOPPING, KILLING = "running", "draining", "stopping", "killing"


def _ignore(signum, frame):
    pass    # the wakeup fd carries the signal to the loop


class Supervisor:
    def __init__(self, argv, containment, grace_s=10.0, timeout_s=None,
                 stop_signal=_signal.SIGTERM, wait_all=False, log=None,
                 before_exec=None):
        self.argv = argv
        self.containment = containment
        self.grace_s = grace_s
        self.timeout_s = timeout_s
        self.stop_signal = stop_signal
        self.wait_all = wait_all
        self.log = log or (lambda msg: None)
        self.before_exec = before_exec
        self.pid1 = os.getpid() == 1
        self.state = RUNNING
        self.pid = None
        self.main_status = None
        self.timed_out = False
        self.no_children = False
        self.kill_at = None
        self.timeout_at = None
        self.terminal = None

    # -- set-up ---------------------------------------------------------

    def _become_subreaper(self):
        if self.pid1:
            return      # init of a pid namespace already receives every orphan
        try:
            _prctl.prctl(_prctl.PR_SET_CHILD_SUBREAPER, 1)
        except OSError as e:
            raise ReaperError(f"PR_SET_CHILD_SUBREAPER failed ({e.strerror}); is this Linux >= 3.4?")

    def _install_signals(self):
        try:
            self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise ReaperError(f"cannot create the signal pipe: {e.strerror} (check ulimit -n)")
        _signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.ignored = [s for s in FORWARDED if _signal.getsignal(s) == _signal.SIG_IGN]
        handled = [s for s in FORWARDED if s not in self.ignored] + [_signal.SIGCHLD]
        for sig in handled:
            _signal.signal(sig, _ignore)
        self.reset_in_child = handled + list(PYTHON_IGNORES)
        if self.pid1:
            for sig in JOB_CONTROL_STOPS:
                _signal.signal(sig, _signal.SIG_IGN)
            self.reset_in_child += list(JOB_CONTROL_STOPS)

    def _start(self):
        self.terminal = Terminal()
        if self.terminal.fd is not None:
            self.reset_in_child.append(_signal.SIGTTOU)
        self.pid = spawn.spawn(
            self.argv,
            cgroup_procs=self.containment.cgroup_procs,
            cgroup_fd=self.containment.cgroup_fd,
            tty_fd=self.terminal.fd,
            foreground=self.terminal.foreground,
            reset_signals=self.reset_in_child,
            pdeathsig=0 if self.pid1 else SIGKILL,
            before_exec=self.before_exec,
        )
        self.log(f"started pid {self.pid}: {' '.join(self.argv)}")
        if self.timeout_s is not None:
            self.timeout_at = time.monotonic() + self.timeout_s

    # -- the loop -------------------------------------------------------

    def run(self):
        try:
            self._become_subreaper()
            self._install_signals()
            self._start()
            self._loop()
        except BaseException:
            self._collect_after_failure()
            raise
        finally:
            if self.terminal is not None and self.pid is not None:
                self.terminal.restore(self.pid)
            self.containment.close()
        if self.timed_out:
            return EXIT_TIMEOUT
        code = os.waitstatus_to_exitcode(self.main_status)
        return 128 - code if code < 0 else code

    def _loop(self):
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        if self.containment.events_fd is not None:
            poller.register(self.containment.events_fd, select.POLLPRI)
        while True:
            self._reap()
            if self._collected():
                return
            self._check_deadlines()
            if self._collected():
                return
            for fd, _ in poller.poll(self._poll_timeout_ms()):
                if fd == self.containment.events_fd:
                    self.containment.empty()    # reading cgroup.events re-arms POLLPRI
            self._drain_signals()

    def _poll_timeout_ms(self):
        deadlines = [d for d in (self.kill_at, self.timeout_at) if d is not None]
        if not deadlines:
            return None     # nothing scheduled: sleep until an event
        return max(0.0, min(deadlines) - time.monotonic()) * 1000 + 1

    def _collected(self):
        if self.main_status is None:
            return False
        if self.pid1 and self.containment.name == "cgroup":
            # PID 1 also adopts processes that `docker exec` started: they are
            # not the job, so only the job's cgroup decides.
            return self.containment.empty()
        return self.no_children and self.containment.empty()

    # -- events ---------------------------------------------------------

    def _reap(self):
        flags = os.WNOHANG
        if self.terminal.fd is not None:
            flags |= os.WUNTRACED
        while True:
            try:
                pid, status = os.waitpid(-1, flags)
            except ChildProcessError:
                self.no_children = True
                return
            if pid == 0:
                return
            if os.WIFSTOPPED(status):
                self._on_stopped(pid, os.WSTOPSIG(status))
            elif pid == self.pid:
                self.main_status = status
                self._on_main_exit()

    def _on_stopped(self, pid, sig):
        if pid == self.pid and self.state == RUNNING and sig in JOB_CONTROL_STOPS:
            self.log(f"job stopped by signal {sig}; stopping too")
            self.terminal.suspend_like(self.pid, sig)

    def _on_main_exit(self):
        self.log(f"main process exited ({self._describe(self.main_status)})")
        if self.state == RUNNING:
            if self.wait_all:
                self.state = DRAINING
                self.log("--wait-all: waiting for the rest of the job to exit")
            elif not self._job_empty():
                self._begin_stop(self.stop_signal, "the main process exited")
        elif self.state == STOPPING:
            self._kill_all("the main process has exited")

    def _job_empty(self):
        if not self.containment.empty():
            return False
        if self.containment.authoritative:
            return True
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return False

    def _drain_signals(self):
        try:
            data = os.read(self.wake_r, 512)
        except BlockingIOError:
            return
        for sig in data:
            if sig != _signal.SIGCHLD:
                self._on_signal(sig)

    def _on_signal(self, sig):
        self.log(f"received signal {sig}")
        self._forward(sig)
        if sig not in STOPPING_SIGNALS:
            return
        if self.state == STOPPING and sig != _signal.SIGQUIT:
            self._kill_all("a second stop signal arrived")
        elif self.state in (RUNNING, DRAINING):
            if self.main_status is not None:
                self._kill_all("the main process has already exited")
            else:
                self.state = STOPPING
                self.kill_at = time.monotonic() + self.grace_s

    def _check_deadlines(self):
        now = time.monotonic()
        if self.timeout_at is not None and now >= self.timeout_at:
            self.timeout_at = None
            self.timed_out = True
            if self.state in (RUNNING, DRAINING):
                self._begin_stop(self.stop_signal, f"--timeout {self.timeout_s:g}s expired")
        if self.kill_at is not None and now >= self.kill_at:
            self._kill_all(f"the grace period of {self.grace_s:g}s is over")

    # -- the stop ladder ------------------------------------------------

    def _killpg(self, sig):
        """Signal the job's process group, but only while its leader is un-reaped."""
        if self.main_status is not None:
            return False
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        return True

    def _forward(self, sig):
        if not self._killpg(sig):
            self.containment.signal_all(sig)

    def _begin_stop(self, sig, why):
        self.log(f"stopping: {why}; sending signal {sig} to the whole job")
        self._killpg(sig)
        self.containment.signal_all(sig)
        self.state = STOPPING
        self.kill_at = time.monotonic() + self.grace_s

    def _kill_all(self, why):
        self.log(f"killing: {why}")
        self.state = KILLING
        self.kill_at = None
        self._killpg(SIGKILL)
        self.containment.signal_all(SIGKILL)

    def _collect_after_failure(self):
        """reaper failed: kill the job and wait until it is gone, whatever it takes."""
        if self.pid is None:
            return
        self.log("reaper failed; killing the job before exiting")
        for action in (lambda: self._killpg(SIGKILL), lambda: self.containment.signal_all(SIGKILL)):
            try:
                action()
            except Exception:
                pass
        from reaper import tree
        tree.signal_all(SIGKILL)
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return
            except InterruptedError:
                continue

    @staticmethod
    def _describe(status):
        if os.WIFSIGNALED(status):
            return f"killed by signal {os.WTERMSIG(status)}"
        return f"status {os.WEXITSTATUS(status)}"
