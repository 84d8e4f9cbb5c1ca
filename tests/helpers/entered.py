"""Test job: a process that entered a container from outside (`docker exec`) and shuts down cleanly.

Prints `ready <pid>`; on TERM prints `got TERM <pid>`, then blocks reading
RELEASE (a FIFO) before exiting 0, so a test decides when it is done.
usage: entered.py RELEASE_FIFO
"""
import os
import signal
import sys


def on_term(signum, frame):
    os.write(1, f"got TERM {os.getpid()}\n".encode())
    with open(sys.argv[1]) as f:
        f.read()
    os._exit(0)


signal.signal(signal.SIGTERM, on_term)
os.write(1, f"ready {os.getpid()}\n".encode())
while True:
    signal.pause()
