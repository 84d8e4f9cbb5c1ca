"""Bench job for reaping: COUNT short-lived orphans, then exit 0.

The main process forks one intermediate at a time; each intermediate forks
BATCH children that exit at once, then exits itself without waiting for them.
Those children become orphans (zombies or nearly so) of whoever adopts them:
the nearest subreaper (the supervisor under test, if it is one) or init.
The main process reaps each intermediate before forking the next, so the only
zombies that can pile up are the orphans, and only if their adopter does not
reap them.

The whole job is a few thousand forks of a small Python process, which is
what makes the wall time long enough (~seconds) to compare supervisors by
ratio rather than by noise.

usage: orphans.py COUNT [--batch BATCH]
"""

import os
import sys


def main():
    args = sys.argv[1:]
    count = int(args[0])
    batch = int(args[args.index("--batch") + 1]) if "--batch" in args else 25
    if not 1 <= count <= 20000 or batch < 1:
        sys.exit("orphans: COUNT must be between 1 and 20000, BATCH >= 1")
    made = 0
    while made < count:
        n = min(batch, count - made)
        pid = os.fork()
        if pid == 0:
            try:
                for _ in range(n):
                    if os.fork() == 0:
                        os._exit(0)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        made += n
    os.write(1, f"done {made}\n".encode())


if __name__ == "__main__":
    main()
