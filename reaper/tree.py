"""Fallback containment: the process tree below a subreaper.

Used where no cgroup v2 can be written (unprivileged users without a delegated
subtree, containers with a read-only cgroupfs).  reaper is a child subreaper,
so every orphan of the job re-parents to reaper and every live descendant of
the job is a descendant of reaper: the tree is the job.

Signalling the tree must not lose a race with fork, and must not hit a pid the
kernel has reused.  The sweep therefore SIGSTOPs every descendant, rescanning
until a scan finds nothing new.  A stopped process cannot fork or exit (except
by SIGKILL), and a zombie's pid is not freed while its parent is stopped or is
reaper (which does not reap during a sweep), so the final set is exact and
stable.  Only then is the real signal sent, followed by SIGCONT.  kill(2) on a
process whose fork is in flight makes that fork fail and restart, so a child
is either visible to the next scan or never born.

psutil does the scanning (it reads /proc/*/stat once per scan and guards every
signal with a create-time check); it is imported here only, so the cgroup path
never pays its ~25 ms import.
"""

import signal

SWEEP_ROUNDS = 10000


def descendants():
    import psutil
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _send(proc, sig):
    import psutil
    try:
        proc.send_signal(sig)
    except psutil.Error:
        pass


def signal_all(sig):
    """Deliver `sig` to every descendant of this process; return how many got it."""
    stopped = {}
    for _ in range(SWEEP_ROUNDS):
        new = [p for p in descendants() if p.pid not in stopped]
        if not new:
            break
        for proc in new:
            _send(proc, signal.SIGSTOP)
            stopped[proc.pid] = proc
    procs = list(stopped.values())
    if sig != signal.SIGSTOP:
        for proc in procs:
            _send(proc, sig)
        if sig != signal.SIGKILL:
            for proc in procs:
                _send(proc, signal.SIGCONT)
    return len(procs)

