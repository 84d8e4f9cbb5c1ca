"""Test job for the container lane: a main process and escaped daemons that report what they get.

Mounted read-only into the container at /jobs and run by reaper there (system
python3, no writes anywhere).  Every line goes to the container's stdout, so
`docker logs` is the record of what each process received:
  daemon <pid> ready            an escaped daemon (double fork + setsid) is up
  daemon <pid> got TERM         ... and what it did with it:
  daemon <pid> exits            ... left cleanly (the default), or
  daemon <pid> ignores TERM     ... --daemons-ignore-term
  main <pid> got TERM           with --trap-term N; then, after --term-work S
                                seconds of shutdown work (default 0):
  main <pid> exits N            ... and it exits N of its own accord
  ready <pid>                   all daemons are up; the main process is next:
--close-stdout (close 1 and 2 first), then --exit N (exit at once),
--kill-self SIG, or wait for a signal (the default).
usage: job.py [--daemons N] [--daemons-ignore-term] [--trap-term N [--term-work S]]
              [--close-stdout] [--exit N | --kill-self SIG]
"""
import argparse
import os
import signal
import time


def say(line):
    try:
        os.write(1, f"{line}\n".encode())
    except OSError:
        pass


def daemon(ignore_term, ready_w):
    os.setsid()
    if os.fork():
        os._exit(0)
    me = os.getpid()

    def on_term(signum, frame):
        say(f"daemon {me} got TERM")
        if ignore_term:
            say(f"daemon {me} ignores TERM")
        else:
            say(f"daemon {me} exits")
            os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    say(f"daemon {me} ready")
    os.close(ready_w)
    while True:
        signal.pause()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--daemons", type=int, default=0)
    p.add_argument("--daemons-ignore-term", action="store_true")
    p.add_argument("--trap-term", type=int)
    p.add_argument("--term-work", type=float, default=0.0)
    p.add_argument("--exit", type=int)
    p.add_argument("--kill-self")
    p.add_argument("--close-stdout", action="store_true")
    a = p.parse_args()
    me = os.getpid()
    if a.trap_term is not None:
        def on_term(signum, frame):
            say(f"main {me} got TERM")
            # A job's own shutdown (flushing, closing connections) takes time;
            # a process killed during it never says `exits`.
            time.sleep(a.term_work)
            say(f"main {me} exits {a.trap_term}")
            os._exit(a.trap_term)
        signal.signal(signal.SIGTERM, on_term)
    for _ in range(a.daemons):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            daemon(a.daemons_ignore_term, w)
        os.close(w)
        os.waitpid(pid, 0)
        os.read(r, 1)       # EOF once the daemon has said `ready`
        os.close(r)
    say(f"ready {me}")
    if a.close_stdout:
        os.close(1)
        os.close(2)
    if a.exit is not None:
        os._exit(a.exit)
    if a.kill_self:
        os.kill(me, getattr(signal, "SIG" + a.kill_self))
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
