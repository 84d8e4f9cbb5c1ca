"""The hand-written Python supervisors the bench compares reaper with.

Each mode is what a careful programmer writes in a few lines without reaper,
so the bench measures the idiom, not a straw man:

- killpg: subprocess.Popen(start_new_session=True); on TERM/INT, os.killpg the
  job's group with TERM, wait up to the grace, then killpg with KILL.  Blind to
  anything that left the group (setsid, double fork).
- psutil: on TERM/INT, psutil.Process().children(recursive=True), terminate
  them all, psutil.wait_procs(grace), kill the rest.  Blind to orphans that
  were re-parented away (to init) before the walk.
- psutil-subreaper: the same walk, but the wrapper first makes itself a child
  subreaper (prctl via ctypes), so orphans are re-parented to it and the walk
  sees them; it also reaps them (os.wait loop) while the job runs.

Other signals (HUP, USR1, USR2, WINCH) are forwarded to the job: to its group
for killpg, to the main process otherwise.  Exit status is the job's, or
128+N if it died of signal N.

usage: pywrap.py MODE [--grace SECONDS] -- CMD [ARG...]
"""

import os
import signal
import subprocess
import sys

FORWARD = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
PR_SET_CHILD_SUBREAPER = 36


class Stop(Exception):
    pass


def become_subreaper():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def exit_code(status_or_rc, is_status):
    rc = os.waitstatus_to_exitcode(status_or_rc) if is_status else status_or_rc
    return 128 - rc if rc < 0 else rc


def stop_killpg(proc, grace):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGTERM:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
    return exit_code(proc.wait(), False)


def stop_psutil(proc, grace, subreaper):
    import psutil
    procs = psutil.Process().children(recursive=True)
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)
    if subreaper:
        return reap_until(proc, block=False)
    return exit_code(proc.wait(), False)


def reap_until(proc, block=True):
    """Reap every child; return the main process's exit code once it is reaped."""
    code = None if proc.returncode is None else exit_code(proc.returncode, False)
    while True:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            code = exit_code(status, True)
            if block:
                break
    return 0 if code is None else code


def main():
    args = sys.argv[1:]
    mode = args.pop(0)
    grace = 10.0
    if args[:1] == ["--grace"]:
        grace = float(args[1])
        args = args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    if mode not in ("killpg", "psutil", "psutil-subreaper") or not args:
        sys.exit(__doc__.strip().splitlines()[-1])
    subreaper = mode == "psutil-subreaper"
    if subreaper:
        become_subreaper()
    if mode != "killpg":
        import psutil  # noqa: F401  (loaded up front, as a real wrapper would)
    proc = None
    pending = []

    def on_stop(signum, frame):
        if proc is None:
            pending.append(signum)      # acted on as soon as Popen has returned
        else:
            raise Stop()

    def forward(signum, frame):
        if proc is None:
            return
        try:
            if mode == "killpg":
                os.killpg(proc.pid, signum)
            else:
                os.kill(proc.pid, signum)
        except ProcessLookupError:
            pass

    # Handlers go in before the job starts: the job may report ready (and the
    # bench send its signal) before Popen has even returned here.
    for sig in FORWARD:
        signal.signal(sig, forward)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    proc = subprocess.Popen(args, start_new_session=(mode == "killpg"))
    try:
        if pending:
            raise Stop()
        if subreaper:
            code = reap_until(proc)
        else:
            code = exit_code(proc.wait(), False)
    except Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if mode == "killpg":
            code = stop_killpg(proc, grace)
        else:
            code = stop_psutil(proc, grace, subreaper)
    sys.exit(code)


if __name__ == "__main__":
    main()
