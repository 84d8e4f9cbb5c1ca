"""Demo: a job that double-forks a TERM-ignoring daemon, with and without reaper.

First the job runs under a plain process-group kill (what most supervisors
do): its setsid'd grandchild survives.  Then the same job runs under
`reaper exec`, which returns only once the daemon is gone.  The demo kills
the survivor of the first run itself (by pid: it started it).
"""
import os
import signal
import subprocess
import sys

JOB = ("trap '' TERM; (setsid sh -c 'trap \"\" TERM; echo $$; exec sleep 1000' &); sleep 0.1")
HERE = os.path.dirname(os.path.abspath(__file__))
REAPER = [sys.executable, "-m", "reaper"]


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def main():
    print("1) plain process group: start the job, wait for it, kill its group", flush=True)
    job = subprocess.Popen(["sh", "-c", JOB], stdout=subprocess.PIPE, start_new_session=True)
    daemon = int(job.stdout.readline())
    job.wait()
    try:
        os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    print(f"   daemon {daemon} still alive: {alive(daemon)}", flush=True)
    if alive(daemon):
        os.kill(daemon, signal.SIGKILL)

    print("2) reaper exec -v --grace 1s -- sh -c '<same job>'", flush=True)
    job = subprocess.Popen(REAPER + ["exec", "-v", "--grace", "1s", "--", "sh", "-c", JOB],
                           stdout=subprocess.PIPE, cwd=os.path.dirname(HERE))
    daemon = int(job.stdout.readline())
    status = job.wait()
    print(f"   reaper exited {status}; daemon {daemon} still alive: {alive(daemon)}", flush=True)
    return 1 if alive(daemon) else 0


if __name__ == "__main__":
    sys.exit(main())
