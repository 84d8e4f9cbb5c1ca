"""As PID 1 without a cgroup: every other process of the pid namespace, pinned, with one fd that wakes.

When reaper is a container's PID 1 and no cgroup can be written, the job is
the whole pid namespace.  Most of it descends from reaper, and waitpid tells
when those are gone; but a process `docker exec` (or `kubectl exec`, or
nsenter) started has a parent outside the namespace, and no wait of reaper's
ever reports it.  If reaper returned when its own children were gone, the
kernel would SIGKILL such a process with the namespace, in the middle of the
grace it was promised.

So the members are listed from /proc (which must show this namespace: the
caller checks), each pinned by a pidfd, and the pidfds are gathered in one
epoll instance.  Its fd is what the supervisor polls: it becomes readable
when any member exits, so waiting costs no wake-ups beyond the exits
themselves.  A pidfd is readable once its process has exited, zombie or not,
so a zombie whose parent lives outside the namespace counts as gone.  Every
pid listed is in this namespace, so a pid reused between listing and pinning
is a member all the same.
"""

import os
import select


class Members:
    def __init__(self):
        self.epoll = select.epoll()
        self.fd = self.epoll.fileno()
        self.pinned = {}        # pidfd -> pid, for each member not yet seen to exit

    def any_alive(self):
        """Pin the members /proc shows now, forget those that exited; is one left?

        A listed pid that was already pinned is skipped; if that pinned
        process turns out to have exited meanwhile, the pid may name a new
        member, so the scan is made again (each repetition needs an exit).
        """
        me = os.getpid()
        while True:
            self._forget_exited()
            known = set(self.pinned.values())
            skipped = []
            for name in os.listdir("/proc"):
                if not name.isdigit():
                    continue
                pid = int(name)
                if pid == me:
                    continue
                if pid in known:
                    skipped.append(pid)
                    continue
                try:
                    pidfd = os.pidfd_open(pid)
                except ProcessLookupError:
                    continue
                self.pinned[pidfd] = pid
                self.epoll.register(pidfd, select.EPOLLIN)
            self._forget_exited()
            still = set(self.pinned.values())
            if all(pid in still for pid in skipped):
                return bool(self.pinned)

    def _forget_exited(self):
        while self.pinned:
            ready = self.epoll.poll(0)
            for pidfd, _ in ready:
                self.epoll.unregister(pidfd)
                os.close(pidfd)
                del self.pinned[pidfd]
            if not ready:
                return

    def close(self):
        for pidfd in self.pinned:
            os.close(pidfd)
        self.pinned.clear()
        self.epoll.close()
