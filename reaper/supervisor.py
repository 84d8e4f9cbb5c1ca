"""The supervisor: one event loop from the job's start until nothing of it is left.

It sleeps in poll(2) on at most two descriptors and wakes only for an event:
- the signal wakeup pipe (signal.set_wakeup_fd): every signal reaper receives,
  SIGCHLD included, arrives as a byte naming it, so handlers do nothing and
  all decisions are made here, in order;
- `cgroup.events` (POLLPRI) when the job's cgroup empties, until someone
  removes that cgroup (its file then polls readable for ever); as PID 1 without
  a cgroup, an epoll of pidfds when a process that entered the namespace
  from outside exits (reaper.namespace).
The only timeouts are the grace and --timeout deadlines, so an idle job costs
zero wake-ups.

All waiting happens here, with waitpid(-1): reaper is a child subreaper, so
orphans of the job are its children, and one reaper of exit statuses avoids the
status-stealing a second waiter would suffer.  The main process's pid is
forgotten the moment it is reaped, so a later child that recycles the pid is
never taken for it.  Its process group is signalled with killpg only while the
leader is un-reaped (the group id is pinned by it); every other signal goes
through the containment, which pins what it signals.

Signals: every signal whose default action would end reaper is caught (tini
forwards the same set), except the faults the kernel raises for reaper's own
bugs (SEGV, BUS, FPE, ILL, TRAP, SYS) and those its own I/O and CPU use raise
(PIPE, XFSZ, XCPU: ignored).  TERM, INT and QUIT stop the job; the others are
forwarded to the job's process group (its whole tree once the main process is
gone).  Away from a terminal, TSTP/TTIN/TTOU suspend every process of the job
and CONT resumes them all, so `kill -TSTP reaper` stops the job, not its
supervisor.

The stop, like systemd's KillMode=control-group: the signal that started it
(the one reaper received; --stop-signal on --timeout or when the main process
exits) goes once to every process of the job, escaped ones included; each
then has the whole --grace to exit; SIGKILL only for what is left after it, or
at once on a second TERM or INT.  The main process exiting during the grace
does not cut it short for the rest.

States and their transition functions (events: main_exited, stop_request,
timeout, grace_over, late_members):
  running  -> draining (main exited, --wait-all) | stopping
  draining -> stopping
  stopping -> killing (grace over, second TERM/INT)
  killing  -> (collected when the containment is empty and no child is left)
If reaper itself fails, the job is killed and collected before the error is
reported.
"""

import os
import select
import _signal
import time

from reaper import spawn
from reaper.errors import EXIT_TIMEOUT, ReaperError
from reaper.terminal import JOB_CONTROL_STOPS, Terminal

SIGKILL, SIGCHLD, SIGQUIT = _signal.SIGKILL, _signal.SIGCHLD, _signal.SIGQUIT
STOPPING_SIGNALS = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGQUIT)
NOT_CAUGHT = (_signal.SIGKILL, _signal.SIGSTOP, _signal.SIGCHLD,
              _signal.SIGSEGV, _signal.SIGBUS, _signal.SIGFPE, _signal.SIGILL,
              _signal.SIGTRAP, _signal.SIGSYS)
OWN_RESOURCE_SIGNALS = (_signal.SIGPIPE, _signal.SIGXFSZ, _signal.SIGXCPU)
CAUGHT = tuple(s for s in sorted(_signal.valid_signals())
               if s not in NOT_CAUGHT and s not in OWN_RESOURCE_SIGNALS)
MAX_POLL_MS = 2 ** 31 - 1       # poll(2) takes an int; longer deadlines are re-armed

RUNNING, DRAINING, STOPPING, KILLING = "running", "draining", "stopping", "killing"
MAIN_EXITED, STOP_REQUEST, TIMEOUT, GRACE_OVER, LATE_MEMBERS = (
    "main_exited", "stop_request", "timeout", "grace_over", "late_members")


def _ignore(signum, frame):
    pass    # the wakeup fd carries the signal to the loop


class Supervisor:
    def __init__(self, argv, containment, grace_s=10.0, timeout_s=None,
                 stop_signal=_signal.SIGTERM, wait_all=False, log=None,
                 before_exec=None, watchers=()):
        self.argv = argv
        self.containment = containment
        self.grace_s = grace_s
        self.timeout_s = timeout_s
        self.stop_signal = stop_signal
        self.wait_all = wait_all
        self.log = log or (lambda msg: None)
        self.before_exec = before_exec
        # What else follows the job (reaper.jobhooks: registry, `reaper kill`,
        # accounting; reaper.notify: sd_notify relay; reaper.forkserver: the
        # Python caller's channel).  Each has `fds` for the poll loop,
        # on_readable(sup, fd) (False: stop watching that fd), and may have
        # started(sup), stopping(sup, why) and collected(sup).
        self.watchers = list(watchers)
        self.pid1 = os.getpid() == 1
        self.state = RUNNING
        self.pid = None             # the main process, until it is reaped
        self.pgid = None
        self.main_status = None
        self.timed_out = False
        self.stop_requested = None
        self.no_children = False
        self.told_rest = False
        self.stopped_by = None
        self.kill_at = None
        self.timeout_at = None
        self.terminal = None
        self.transitions = {RUNNING: self._running, DRAINING: self._draining,
                            STOPPING: self._stopping, KILLING: self._killing}

    # -- set-up ---------------------------------------------------------

    def _become_subreaper(self):
        if self.pid1:
            return      # init of a pid namespace already receives every orphan
        try:
            spawn.prctl(spawn.PR_SET_CHILD_SUBREAPER, 1)
        except OSError as e:
            raise ReaperError(f"PR_SET_CHILD_SUBREAPER failed ({e.strerror}); is this Linux >= 3.4?")

    def _install_signals(self):
        try:
            self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise ReaperError(f"cannot create the signal pipe: {e.strerror} (check ulimit -n)")
        _signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.terminal = Terminal()
        at_tty = self.terminal.fd is not None
        # Signals ignored when reaper started stay ignored, for the job too (nohup).
        handled = [s for s in CAUGHT if _signal.getsignal(s) != _signal.SIG_IGN
                   and not (at_tty and s in JOB_CONTROL_STOPS)
                   and not (self.pid1 and s in JOB_CONTROL_STOPS)]
        for sig in handled + [SIGCHLD]:
            _signal.signal(sig, _ignore)
        for sig in OWN_RESOURCE_SIGNALS:
            _signal.signal(sig, _signal.SIG_IGN)
        if self.pid1:
            from reaper import early
            if early.caught:    # signals reaper.cli caught before we were ready
                os.write(self.wake_w, bytes(early.caught))
                early.caught.clear()
        self.reset_in_child = handled + [SIGCHLD] + list(OWN_RESOURCE_SIGNALS)
        if self.pid1:
            for sig in JOB_CONTROL_STOPS:
                _signal.signal(sig, _signal.SIG_IGN)
            self.reset_in_child += list(JOB_CONTROL_STOPS)
        if at_tty:
            self.reset_in_child.append(_signal.SIGTTOU)

    def _start(self):
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
        self.pgid = self.pid
        self.log(f"started pid {self.pid}: {' '.join(self.argv)}")
        self._tell("started")
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
            if self.terminal is not None and self.pgid is not None:
                self.terminal.restore(self.pgid)
            if self.pgid is not None:
                self._tell("collected")         # before the cgroup (and its counters) goes
            self.containment.close()
        if self.timed_out:
            return EXIT_TIMEOUT
        code = os.waitstatus_to_exitcode(self.main_status)
        return 128 - code if code < 0 else code

    def _loop(self):
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        if self.containment.events_fd is not None:
            poller.register(self.containment.events_fd, self.containment.events_mask)
        owners = {fd: w for w in self.watchers for fd in w.fds}
        for fd in owners:
            poller.register(fd, select.POLLIN)
        while True:
            self._reap()
            if self._collected():
                return
            self._check_deadlines()
            self._check_late_members()
            if self._collected():
                return
            for fd, _ in poller.poll(self._poll_timeout_ms()):
                if fd == self.containment.events_fd:
                    self.containment.empty()    # re-arms: reads cgroup.events, or drains the epoll
                    if self.containment.events_gone:
                        poller.unregister(fd)   # a removed cgroup's cgroup.events polls readable for ever
                elif fd in owners and owners[fd].on_readable(self, fd) is False:
                    poller.unregister(fd)       # e.g. EOF, which would stay readable
            self._drain_signals()

    def _poll_timeout_ms(self):
        deadlines = [d for d in (self.kill_at, self.timeout_at) if d is not None]
        if not deadlines:
            return None     # nothing scheduled: sleep until an event
        ms = max(0.0, min(deadlines) - time.monotonic()) * 1000 + 1
        return int(min(ms, MAX_POLL_MS))

    def _job_empty(self):
        if not self.no_children:
            return False
        if self.containment.empty():
            return True
        if not self.told_rest:      # e.g. what `docker exec` started, as PID 1 without a cgroup
            self.told_rest = True
            self.log(f"no child of reaper is left; waiting for the rest of the job: "
                     f"pids {' '.join(map(str, self.containment.rest()))}")
        return False

    def _collected(self):
        if self.main_status is None:
            return False
        if self.pid1 and self.containment.name == "cgroup":
            # PID 1 also adopts processes that `docker exec` started: they are
            # not the job, so only the job's cgroup decides.
            return self.containment.empty()
        return self._job_empty()

    # -- events ---------------------------------------------------------

    def _tell(self, what, *args):
        for watcher in self.watchers:
            method = getattr(watcher, what, None)
            if method is not None:
                method(self, *args)

    def _event(self, event, arg=None):
        self.transitions[self.state](event, arg)

    def _reap(self):
        flags = os.WNOHANG
        if self.terminal.fd is not None:
            flags |= os.WUNTRACED
        main_exited = False
        while True:
            try:
                pid, status = os.waitpid(-1, flags)
            except ChildProcessError:
                self.no_children = True
                break
            if pid == 0:
                self.no_children = False
                break
            if pid != self.pid:
                continue
            if os.WIFSTOPPED(status):
                self._on_stopped(os.WSTOPSIG(status))
            else:
                self.main_status = status
                self.pid = None     # reaped: the pid may be reused from now on
                main_exited = True
        if main_exited:
            self.log(f"main process exited ({self._describe(self.main_status)})")
            self._event(MAIN_EXITED)

    def _on_stopped(self, sig):
        if self.state == RUNNING and sig in JOB_CONTROL_STOPS:
            self.log(f"job stopped by signal {sig}; stopping too")
            self.terminal.suspend_like(self.pgid, sig)

    def _drain_signals(self):
        try:
            data = os.read(self.wake_r, 512)
        except BlockingIOError:
            return
        for sig in data:
            if sig == SIGCHLD:
                continue
            self.log(f"received signal {sig}")
            if sig in STOPPING_SIGNALS:
                self.stop_requested = self.stop_requested or sig     # reaper.cli.exit_like_the_job
                self._event(STOP_REQUEST, (sig, f"received signal {sig}"))
            elif sig in JOB_CONTROL_STOPS or sig == _signal.SIGCONT:
                self._suspend_or_resume(sig)
            else:
                self._forward(sig)

    def _check_deadlines(self):
        now = time.monotonic()
        if self.timeout_at is not None and now >= self.timeout_at:
            self.timeout_at = None
            self._event(TIMEOUT)
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            self._event(GRACE_OVER)

    def _check_late_members(self):
        """Processes that left the job cgroup surface as reaper's children once it empties."""
        if self.state in (STOPPING, KILLING) and not self.no_children and self.containment.empty():
            late = self.containment.outsiders(new_only=True)
            if late:
                self._event(LATE_MEMBERS, late)

    # -- transitions, one function per state ------------------------------

    # STOP_REQUEST carries (signal, why): a received TERM/INT/QUIT, `reaper kill`
    # or the Python API; SIGKILL means at once.  LATE_MEMBERS carries the pids.

    def _running(self, event, arg):
        if event == MAIN_EXITED:
            if self._job_empty():
                return      # nothing left: _collected() ends the loop
            if self.wait_all:
                self.state = DRAINING
                self.log("--wait-all: waiting for the rest of the job to exit")
            else:
                self._stop(self.stop_signal, "the main process exited")
        elif event == STOP_REQUEST:
            self._stop_or_kill(*arg)
        elif event == TIMEOUT:
            self.timed_out = True
            self._stop(self.stop_signal, f"--timeout {self.timeout_s:g}s expired")

    def _draining(self, event, arg):
        if event == STOP_REQUEST:
            self._stop_or_kill(*arg)
        elif event == TIMEOUT:
            self.timed_out = True
            self._stop(self.stop_signal, f"--timeout {self.timeout_s:g}s expired")

    def _stopping(self, event, arg):
        if event == GRACE_OVER:
            self._kill(f"the grace period of {self.grace_s:g}s is over")
        elif event == STOP_REQUEST and arg[0] != SIGQUIT:
            self._kill(f"a second stop request ({arg[1]})")
        elif event == LATE_MEMBERS:
            self.log(f"processes that left the job cgroup: {arg}; signal {self.stopped_by} "
                     f"and a full grace for them")
            self.containment.signal_outsiders(self.stopped_by, arg)
            self.kill_at = time.monotonic() + self.grace_s

    def _killing(self, event, arg):
        if event == LATE_MEMBERS:
            self.containment.signal_outsiders(SIGKILL, arg)

    def request_stop(self, sig, grace_s, why):
        """A stop asked for from outside (`reaper kill`, the Python API): what a
        received TERM does, with this signal and grace (grace 0: kill at once)."""
        if grace_s is not None:
            self.grace_s = grace_s
        self._event(STOP_REQUEST, (SIGKILL if grace_s == 0 else sig, why))

    # -- actions --------------------------------------------------------

    def _stop_or_kill(self, sig, why):
        if sig == SIGKILL:
            self._kill(why)
        else:
            self._stop(sig, why)

    def _stop(self, sig, why):
        self.log(f"stopping: {why}; signal {sig} to every process of the job, "
                 f"SIGKILL after {self.grace_s:g}s")
        self._tell("stopping", why)
        self.state = STOPPING
        self.stopped_by = sig
        self.containment.signal_all(sig)
        self.kill_at = time.monotonic() + self.grace_s

    def _kill(self, why):
        self.log(f"killing: {why}")
        self._tell("stopping", why)
        self.state = KILLING
        self.kill_at = None
        self._killpg(SIGKILL)
        self.containment.signal_all(SIGKILL)

    def _killpg(self, sig):
        """Signal the job's process group, but only while its leader is un-reaped."""
        if self.pid is None:
            return False
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass
        return True

    def _suspend_or_resume(self, sig):
        """Away from a terminal: TSTP, TTIN, TTOU suspend the whole job, CONT resumes it.

        The job has a session of its own whose group is orphaned, and the
        kernel discards job-control stops sent to an orphaned group (POSIX,
        "orphaned process group"), so forwarding them would do nothing: they
        become SIGSTOP for every process instead.  At a terminal reaper does not
        catch them (reaper.terminal handles job control there).
        """
        what = _signal.SIGCONT if sig == _signal.SIGCONT else _signal.SIGSTOP
        self.log(f"{'resuming' if what == _signal.SIGCONT else 'suspending'} the job (signal {sig})")
        self._killpg(what)
        self.containment.signal_all(what)

    def _forward(self, sig):
        if not self._killpg(sig):
            self.containment.signal_all(sig)

    def _collect_after_failure(self):
        """reaper failed: kill the job and wait until it is gone, whatever it takes."""
        if self.pgid is None:
            return
        self.log("reaper failed; killing the job before exiting")
        from reaper import tree
        for action in (lambda: self._killpg(SIGKILL), lambda: self.containment.signal_all(SIGKILL),
                       lambda: tree.signal_all(SIGKILL)):
            try:
                action()
            except Exception:
                pass
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
