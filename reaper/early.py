"""Signals that arrive before the supervisor is ready, when reaper is PID 1.

The kernel discards a signal sent to the init of a pid namespace unless the
init has a handler for it (pid_namespaces(7)).  From exec to the supervisor's
handlers there are tens of milliseconds of imports; a `docker stop` right
after `docker run` lands there, is dropped, and the container then waits for
the runtime's SIGKILL (measured: 3 of 10 immediate stops, more under load).
So reaper's entry point calls catch() first thing as PID 1, and the
supervisor replays what was caught into its wakeup pipe.  The interpreter's
own start-up (before any Python code runs) is closed by the container
entrypoint, scripts/reaper-entrypoint.c: it blocks these signals before it
execs the launcher, a blocked signal is never discarded, and catch() unblocks
them once its handlers are in place, so what arrived meanwhile lands here.
Elsewhere a signal's default action still applies before the job starts: it
ends reaper, and no job exists yet.
"""

import _signal

caught = []


def _record(signum, frame):
    caught.append(signum)


CAUGHT = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGQUIT, _signal.SIGHUP,
          _signal.SIGUSR1, _signal.SIGUSR2)     # what reaper-entrypoint.c blocks


def catch():
    for sig in CAUGHT:
        if _signal.getsignal(sig) != _signal.SIG_IGN:
            _signal.signal(sig, _record)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, CAUGHT)
