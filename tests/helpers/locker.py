"""Test job: an escaped daemon that takes its job cgroup's lock once reaper dies.

The daemon opens its own cgroup directory and blocks in flock(LOCK_EX) (reaper
holds it), then prints `locked <pid>` once it has it.  The main process prints
`daemon <pid>` and `ready <pid>` and waits.
usage: locker.py
"""
import fcntl
import os
import signal

from reaper import cgroup

r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.close(r)
        path = cgroup.Hierarchy().own_dir()
        os.write(w, f"{os.getpid()}\n".encode())
        os.close(w)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(1, f"locked {os.getpid()}\n".encode())
        while True:
            signal.pause()
    os._exit(0)
os.close(w)
with os.fdopen(r) as pipe:
    daemon = pipe.read().strip()
os.wait()
print(f"daemon {daemon}")
print(f"ready {os.getpid()}", flush=True)
while True:
    signal.pause()
