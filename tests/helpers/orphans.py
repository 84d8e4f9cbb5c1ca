"""Test job: make COUNT short-lived orphans, then report and wait.

Each orphan's parent exits at once, so the orphan re-parents to reaper (the
subreaper) and its exit leaves a zombie only reaper can reap.  Prints `done`
once every orphan has exited, then waits for stdin to close.
usage: orphans.py COUNT
"""
import os
import sys

count = int(sys.argv[1])
for _ in range(count):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:
            os._exit(0)      # closes w: the parent sees EOF once the orphan is gone
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    os.read(r, 1)            # EOF: the orphan has exited (it is a zombie or reaped)
    os.close(r)
print("done", flush=True)
sys.stdin.read()
