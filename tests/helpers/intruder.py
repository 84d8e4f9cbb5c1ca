"""Test job (root): writes its supervisor's pid into the job's own cgroup.

Finds the job cgroup from /proc/self/cgroup and the cgroup2 mount, moves its
parent (reaper) into it, leaves COUNT escaped daemons behind (escape.py's way),
prints `ready <pid>` and exits STATUS.
usage: intruder.py COUNT STATUS
"""
import os
import signal
import sys

from reaper import cgroup

count, status = int(sys.argv[1]), int(sys.argv[2])
h = cgroup.Hierarchy()
with open(os.path.join(h.own_dir(), "cgroup.procs"), "w") as f:
    f.write(str(os.getppid()))
for _ in range(count):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            while True:
                signal.pause()
        os._exit(0)
    os.wait()
print(f"ready {os.getpid()}", flush=True)
sys.exit(status)
