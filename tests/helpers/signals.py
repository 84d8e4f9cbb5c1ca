"""Test job: report each forwarded signal as `got NAME`.

Prints `ready <pid>` once its handlers are installed, so tests never race it.
With --stop-exit N it exits N after reporting TERM, INT or QUIT.
usage: signals.py [--stop-exit N]
"""
import os
import signal
import sys

NAMES = ("HUP", "INT", "QUIT", "USR1", "USR2", "TERM", "WINCH", "CONT")
stop_exit = int(sys.argv[2]) if sys.argv[1:2] == ["--stop-exit"] else None


def handler(signum, frame):
    name = signal.Signals(signum).name[3:]
    os.write(1, f"got {name}\n".encode())
    if name in ("TERM", "INT", "QUIT") and stop_exit is not None:
        os._exit(stop_exit)


for name in NAMES:
    signal.signal(getattr(signal, "SIG" + name), handler)
os.write(1, f"ready {os.getpid()}\n".encode())
while True:
    signal.pause()
