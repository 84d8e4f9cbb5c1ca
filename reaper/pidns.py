"""--pidns: a guarantee that survives reaper's own death.

reaper enters a new pid namespace for its children (unshare(CLONE_NEWPID);
unprivileged users get a user namespace too, mapping only their own ids), so
the job's first process is PID 1 of that namespace.  That process is not the
command but a small init: a second Supervisor, which forks the command,
reaps, forwards signals and runs the same stop ladder, with kill(-1, sig)
reaching every process of the namespace.  The init has PR_SET_PDEATHSIG =
SIGKILL, and when the init of a pid namespace dies the kernel SIGKILLs every
process in it (pid_namespaces(7)).  So a SIGKILLed or OOM-killed reaper takes
the whole job with it, with no cooperation from the job.

What this does not do: mount a private /proc (tools in the job still see the
host's pids there), or isolate anything but pids.
"""

import os

from reaper.errors import ReaperError

CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000


def _unshare(flags):
    if hasattr(os, "unshare"):      # Python >= 3.12
        os.unshare(flags)
        return
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _map_own_ids(uid, gid):
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


class NamespaceContainment:
    """Inside the namespace, kill(-1) reaches every process but the init itself."""

    name = "pidns"
    reason = "init of the job's pid namespace"
    cgroup_procs = None
    cgroup_fd = None
    events_fd = None

    def signal_all(self, sig):
        try:
            os.kill(-1, sig)
        except ProcessLookupError:
            pass

    def outsiders(self, new_only=False):
        return []       # nothing leaves a pid namespace

    def empty(self):
        return True     # the init knows: no children left means an empty namespace

    def rest(self):
        return []

    def close(self):
        pass


def prepare(argv, log, grace_s, stop_signal, wait_all):
    """Enter a new pid namespace for our children; return the init to run in the first one."""
    uid, gid = os.geteuid(), os.getegid()
    try:
        if uid == 0:
            _unshare(CLONE_NEWPID)
        else:
            _unshare(CLONE_NEWUSER | CLONE_NEWPID)
            _map_own_ids(uid, gid)
    except OSError as e:
        raise ReaperError(f"--pidns: cannot create a pid namespace: {e.strerror}")
    if log:
        log("--pidns: the job runs in a new pid namespace; its init dies with reaper")

    def init(report_fd):
        os.close(report_fd)     # the init itself started fine; the command's errors are its own
        from reaper.cli import report
        from reaper.supervisor import Supervisor
        sup = Supervisor(argv, NamespaceContainment(), grace_s=grace_s, stop_signal=stop_signal,
                         wait_all=wait_all, log=log and (lambda msg: log(f"init: {msg}")))
        try:
            return sup.run()
        except ReaperError as e:
            return report(e)
    return init
