"""Test helper: call reaper.spawn.spawn() once and report what happened, as JSON on stdout.

usage: spawner.py SPEC_JSON
SPEC: {"argv": [...], "job": cgroup dir or null, "procs": bool (also pass its
cgroup.procs, for the fork fallback), "pidfd": bool, "path": PATH or null}

The job writes wherever its argv says; this process waits for it (through the
pidfd first, when there is one, before reaping it), removes nothing, and prints
{"backend", "pid", "pidfd", "pidfd_inheritable", "pidfd_readable", "status",
"ctypes_loaded", "error", "code"}.
"""

import json
import os
import select
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
    try:
        r = spawn.spawn(spec["argv"], cgroup_fd=fd, cgroup_procs=procs, want_pidfd=spec["pidfd"])
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
