"""Test job: leave daemons behind that a process group cannot catch.

Forks COUNT daemons that double-fork and setsid (their own session, parent
gone), optionally ignoring TERM, then prints `daemon <pid>` for each and
`ready <pid>`.  Afterwards the main process exits with STATUS, or with
--stay it waits until signalled.
usage: escape.py COUNT [--ignore-term] [--exit STATUS | --stay]
"""
import os
import signal
import sys

count = int(sys.argv[1])
ignore_term = "--ignore-term" in sys.argv
status = int(sys.argv[sys.argv.index("--exit") + 1]) if "--exit" in sys.argv else None

r, w = os.pipe()
for _ in range(count):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            if ignore_term:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.close(r)
            os.write(w, f"{os.getpid()}\n".encode())
            os.close(w)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            while True:
                signal.pause()
        os._exit(0)
os.close(w)
with os.fdopen(r) as pipe:
    daemons = pipe.read().split()
for _ in range(count):
    os.wait()
for pid in daemons:
    print(f"daemon {pid}")
print(f"ready {os.getpid()}", flush=True)
if status is not None:
    sys.exit(status)
while True:
    signal.pause()
