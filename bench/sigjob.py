"""Bench job for signal forwarding: answer each SIGUSR1 with one byte on stdout.

It prints `ready <pid>` once the handler is installed, then sleeps in pause().
The handler writes `u` straight to fd 1 (no buffering), so the bench's clock
stops at the moment the job's handler has run.  Run with `python -I -S` so the
job itself starts fast and carries no site-packages.

usage: python -I -S sigjob.py
"""

import os
import signal


def on_usr1(signum, frame):
    os.write(1, b"u")


signal.signal(signal.SIGUSR1, on_usr1)
os.write(1, f"ready {os.getpid()}\n".encode())
while True:
    signal.pause()
