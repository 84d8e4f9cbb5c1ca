"""Test job: an escaped daemon that shuts down cleanly on TERM, when told it may.

Double-forks a setsid daemon that, on TERM, prints `daemon got TERM <pid>` and
then blocks reading RELEASE (a FIFO) before exiting 0, like a database that
flushes before it exits.  The main process prints `daemon <pid>` and
`ready <pid>`, then waits to be signalled (TERM's default action kills it).
usage: graceful.py RELEASE_FIFO
"""
import os
import signal
import sys

release = sys.argv[1]
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        def on_term(signum, frame):
            os.write(1, f"daemon got TERM {os.getpid()}\n".encode())
            with open(release) as f:
                f.read()
            os._exit(0)
        signal.signal(signal.SIGTERM, on_term)
        os.close(r)
        os.write(w, f"{os.getpid()}\n".encode())
        os.close(w)
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
