"""reaper: run a command and collect every process it starts.

The package is split by responsibility, each module importable on its own so
that `reaper exec` loads only what it uses:

- cli: argument parsing, the single place that maps errors to exit codes
- containment: picks cgroup or process-tree containment and says why
- cgroup: cgroup v2 discovery, the job's cgroup, cgroup.kill / freeze
- tree: the fallback (subreaper + a stop-the-tree sweep that pins every pid)
- spawn: fork or clone3 into the cgroup (reaper._linux, C), set up the session, exec
- supervisor: the event loop, reaping, signal forwarding, the stop ladder
- terminal: foreground process group and job control
- early: stop signals that reach PID 1 before the supervisor is ready
- pidns: --pidns, a pid namespace whose init dies with reaper
- delegation, systemd: is reaper's cgroup delegated; transient scopes over D-Bus
- notify: the sd_notify relay for Type=notify units
- registry, control, jobhooks, commands_jobs, inspect, stats, limits: named
  jobs, `reaper kill/ls/ps/ports/stats`, accounting and limits
- doctor: what this machine offers, for humans and for --json
- api, aio, forkserver: the Python API (run, Job, arun, AsyncJob) and its supervisors
- pytest: the pytest plugin (`pytest -p reaper.pytest`)

The API names below are imported on first use (PEP 562), so `reaper exec`,
which imports this package too, does not pay for them.
"""

TYPE_CHECKING = False     # not `from typing import ...`: typing costs ~10 ms on `reaper exec`

__version__ = "0.1.0"

_API = {"run": "reaper.api", "Job": "reaper.api", "Result": "reaper.api",
        "ProcessInfo": "reaper.api", "PIPE": "reaper.api", "DEVNULL": "reaper.api",
        "STDOUT": "reaper.api", "UsageError": "reaper.api", "CommandNotFound": "reaper.api",
        "CommandNotExecutable": "reaper.api", "JobTimeout": "reaper.api",
        "JobFailed": "reaper.api", "SupervisorLost": "reaper.api", "WaitTimeout": "reaper.api",
        "ReaperError": "reaper.errors", "arun": "reaper.aio", "AsyncJob": "reaper.aio"}

__all__ = sorted(_API)

if TYPE_CHECKING:
    from typing import Any

    from reaper.aio import AsyncJob, arun  # noqa: F401
    from reaper.api import (DEVNULL, PIPE, STDOUT, CommandNotExecutable,  # noqa: F401
                            CommandNotFound, Job, JobFailed, JobTimeout, ProcessInfo, Result,
                            SupervisorLost, UsageError, WaitTimeout, run)
    from reaper.errors import ReaperError  # noqa: F401


def __getattr__(name: str) -> "Any":     # a string: no `from __future__` (its import costs ~0.2 ms)
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'reaper' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
