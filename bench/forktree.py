"""Bench job for teardown: a tree of N processes that a process group cannot catch.

The main process forks N-1 others.  Every second one escapes: an intermediate
child calls setsid() and forks it, then exits, so the survivor sits in a
session of its own with its parent gone (a "daemon" in the classic double-fork
sense; it is re-parented to the nearest subreaper, or to init).  The others
stay direct children of the main process, in its process group.  Every
IGNORE_EVERY-th process ignores SIGTERM; with --main-ignores-term the main
process does too, which forces any supervisor to wait out its grace period.

Readiness is an event, never a guess: each process writes one byte to a pipe
once its signal disposition is final, and the main process prints
`ready <pid> <n>` on stdout only after it has read all N-1 bytes, i.e. when all
N processes exist.  Then everything waits in pause() until killed.

Python's fork is used rather than exec'ing a small binary so that no extra
binary is needed; the children touch almost no memory, so 1,000 of them are
cheap (10,000 of them take ~1-2 GiB).  Children never return into the interpreter's normal shutdown: they
either pause forever or leave with os._exit.

usage: forktree.py N [--ignore-every K] [--main-ignores-term]
"""

import os
import signal
import sys

# The bound on what one trial may fork (the bench's cgroup also gets pids.max
# where the pids controller is on cgroup v2): 10,000 is ~30% of the default
# pid_max of 32768, and ~1-2 GiB of memory for the copies of the interpreter.
MAX_N = 10000


def settle(ignore_term, ready_w, ready_r):
    """Final set-up of one tree member: signal disposition, readiness, then wait."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore_term else signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.close(ready_r)
    os.write(ready_w, b"x")
    os.close(ready_w)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    while True:
        signal.pause()


def main():
    args = sys.argv[1:]
    total = int(args[0])
    ignore_every = int(args[args.index("--ignore-every") + 1]) if "--ignore-every" in args else 0
    main_ignores = "--main-ignores-term" in args
    if not 1 <= total <= MAX_N:
        sys.exit(f"forktree: N must be between 1 and {MAX_N}")
    ready_r, ready_w = os.pipe()
    for i in range(1, total):
        ignore = bool(ignore_every) and i % ignore_every == 0
        escape = i % 2 == 0
        pid = os.fork()
        if pid == 0:
            try:
                if escape:
                    os.setsid()
                    if os.fork() != 0:
                        os._exit(0)
                settle(ignore, ready_w, ready_r)
            finally:
                os._exit(1)
        if escape:
            os.waitpid(pid, 0)      # the intermediate exits at once
    os.close(ready_w)
    got = 0
    while got < total - 1:
        chunk = os.read(ready_r, 65536)
        if not chunk:
            sys.exit(f"forktree: only {got} of {total - 1} processes reported ready")
        got += len(chunk)
    os.close(ready_r)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if main_ignores else signal.SIG_DFL)
    os.write(1, f"ready {os.getpid()} {total}\n".encode())
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
