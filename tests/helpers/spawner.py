"""Test helper: call reaper.spawn.spawn() once and report what happened, as JSON on stdout.

usage: spawner.py SPEC_JSON
SPEC: {"argv": [...], "job": cgroup dir or null, "procs": bool (also pass its
cgroup.procs, for the fork fallback), "pidfd": bool, "path": PATH or null,
"hook_file": a file an os.register_at_fork child hook creates (Python ran in
the child), "ignore": signals set to SIG_IGN first, "reset": reset_signals}

The job writes wherever its argv says; this process waits for it (through the
pidfd first, when there is one, before reaping it), removes nothing, and prints
{"backend", "pid", "pidfd", "pidfd_inheritable", "pidfd_readable", "status",
"ctypes_loaded", "error", "code"}.
"""

import json
import os
import select
import signal
import sys

from reaper import spawn
from reaper.errors import ReaperError


def main():
    spec = json.loads(sys.argv[1])
    if spec.get("path") is not None:
        os.environ["PATH"] = spec["path"]
    out = {"backend": spawn.clone3_backend()}
    fd = os.open(spec["job"], os.O_RDONLY | os.O_DIRECTORY) if spec.get("job") else None
    procs = os.path.join(spec["job"], "cgroup.procs") if spec.get("procs") else None
    if spec.get("hook_file"):
        os.register_at_fork(after_in_child=lambda: os.close(os.open(spec["hook_file"], os.O_CREAT | os.O_WRONLY)))
    for sig in spec.get("ignore", []):
        signal.signal(sig, signal.SIG_IGN)
    try:
        r = spawn.spawn(spec["argv"], cgroup_fd=fd, cgroup_procs=procs, want_pidfd=spec["pidfd"],
                        reset_signals=spec.get("reset", ()))
    except ReaperError as e:
        out.update(error=str(e), code=e.code)
    else:
        pid, pidfd = r if spec["pidfd"] else (r, None)
        out.update(pid=pid, pidfd=pidfd)
        if pidfd is not None:
            out["pidfd_inheritable"] = os.get_inheritable(pidfd)
            p = select.poll()
            p.register(pidfd, select.POLLIN)
            out["pidfd_readable"] = bool(p.poll(20000))     # the job has exited
        out["status"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if pidfd is not None:
            os.close(pidfd)
    out["ctypes_loaded"] = "ctypes" in sys.modules
    print(json.dumps(out))


if __name__ == "__main__":
    main()
