"""Test job: a bounded runaway forker.

SPINNERS processes each fork up to ROUNDS children as fast as they can; every
second child escapes with setsid, every third ignores TERM, and every child
sleeps until killed.  The spinners keep forking after `ready` is printed (once
MIN_ALIVE children exist), so a stop races live forks.  Total processes are
bounded by SPINNERS * ROUNDS.
usage: forker.py SPINNERS ROUNDS MIN_ALIVE
"""
import os
import signal
import sys

spinners, rounds, min_alive = (int(x) for x in sys.argv[1:4])
r, w = os.pipe()
for s in range(spinners):
    if os.fork() == 0:
        os.close(r)
        for i in range(rounds):
            try:
                pid = os.fork()
            except OSError:
                continue
            if pid == 0:
                if i % 2:
                    os.setsid()
                if i % 3 == 0:
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                os.write(w, b".")
                os.close(w)
                while True:
                    signal.pause()
        while True:
            signal.pause()
os.close(w)
seen = 0
while seen < min_alive:
    chunk = os.read(r, 4096)
    if not chunk:
        break
    seen += len(chunk)
print(f"ready {seen}", flush=True)
while True:
    signal.pause()
