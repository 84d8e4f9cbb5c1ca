"""Test job (root): a child that moves itself out of the job's cgroup.

The child writes its own pid into TARGET/cgroup.procs (a cgroup outside the
job's), optionally ignores TERM, prints `moved <pid>`, and waits.  The main
process prints `ready <pid>` once the move is done, then exits 0 or, with
--stay, waits to be signalled.
usage: mover.py TARGET_CGROUP_DIR [--ignore-term] [--stay]
"""
import os
import signal
import sys

target = sys.argv[1]
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.close(r)
    if "--ignore-term" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(os.path.join(target, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    os.write(w, b"x")
    os.close(w)
    while True:
        signal.pause()
os.close(w)
os.read(r, 1)
print(f"moved {child}")
print(f"ready {os.getpid()}", flush=True)
if "--stay" in sys.argv:
    while True:
        signal.pause()
