"""pytest plugin: every test runs as a job; processes it leaves behind fail it and are collected.

    pytest -p reaper.pytest          (or `--reaper` / `reaper = true` in the ini file,
                                      through the entry point in reaper.pytest_entry)

With a writable cgroup v2 (root, a delegated systemd subtree, a container with
its own cgroup namespace), the plugin makes `<pytest's cgroup>/reaper-pytest.<pid>.<id>/`
with a `runner` child that pytest itself moves into, and for each test a fresh
child that pytest moves into before the test's setup and out of after its
teardown.  Every process forked meanwhile -- daemons that called setsid() or
double-forked included -- is in that cgroup, since nothing leaves a cgroup by
forking.  Whatever is still in it after the teardown is a leak: the test's
teardown fails with the command lines, and the cgroup is emptied with
`cgroup.kill` (or freeze, signal, thaw where that file is missing) and removed
before the next test starts.  This is the project's own tests/conftest.py,
made into a plugin that needs no cooperation from the tests.

Without one (an unprivileged user outside a delegated subtree), pytest becomes
a child subreaper for the session (PR_SET_CHILD_SUBREAPER), so orphans of a
test re-parent to it and stay in its process tree; the test's leftovers are
the descendants that were not there before the test (pid and start time).
This misses a process that leaves the tree on purpose (asks systemd or another
daemon to start it), and makes pytest the reaper of those orphans: the plugin
reaps them.  The header line says which mode is in use and why.

reaper's own Python API keeps its fork server, which outlives tests by design,
in the runner (cgroup mode) or out of the count (fallback); a job a test
started through the API and left running is still that test's leak, and is
killed so that its supervisor collects it and removes its cgroup.

Known limit: a process started by a session- or module-scoped fixture counts
as a leak of the test during which it was started (mark such tests with
`@pytest.mark.reaper_allow_leftovers`, or start it before the tests run).
"""

from __future__ import annotations

import os
import select
import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

import pytest

LEAK_WAIT_S = 10.0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            text = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        return text or "?"
    except OSError:
        return "(exited)"


class CgroupJobs:
    """Each test in a cgroup of its own under pytest's cgroup."""

    def __init__(self, parent: str) -> None:
        self.parent = parent
        self.root = os.path.join(parent, f"reaper-pytest.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        self.runner = os.path.join(self.root, "runner")
        os.mkdir(self.root)
        os.mkdir(self.runner)
        from reaper import cgroup
        cgroup.write(os.path.join(self.runner, "cgroup.procs"), "0")
        self.kill_how = "cgroup.kill" if cgroup.has_kill(self.runner) else "freeze, signal, thaw"
        self.counter = 0
        self.current: Optional[str] = None
        self.runner_jobs: Set[str] = set()

    def describe(self) -> str:
        return (f"each test in its own cgroup under {self.root} "
                f"(leftovers fail the test and are killed with {self.kill_how})")

    def enter(self, name: str) -> None:
        self.counter += 1
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]
        self.current = os.path.join(self.root, f"t{self.counter:05d}.{safe}")
        os.mkdir(self.current)
        from reaper import cgroup
        cgroup.write(os.path.join(self.current, "cgroup.procs"), "0")
        self.runner_jobs = set(self._runner_jobs())

    def _runner_jobs(self) -> List[str]:
        """Job cgroups of reaper.api's supervisors, which live in the runner with the fork server."""
        try:
            return [d for d in os.listdir(self.runner) if d.startswith("reaper.")]
        except OSError:
            return []

    def leave(self) -> List[Tuple[int, str]]:
        """Move pytest out; return what is left (pid, command line), then collect it."""
        path = self.current
        if path is None:
            return []
        self.current = None
        from reaper import cgroup
        cgroup.write(os.path.join(self.runner, "cgroup.procs"), "0")
        self._rescue_api_server(path)
        leaked = [(pid, _cmdline(pid)) for pid in _cgroup_pids(path)]
        # Jobs the test started through reaper.api after its fork server moved to
        # the runner, and left running: kill them through their cgroup (their
        # supervisor stays, sees the job end, reports and removes the directory).
        for name in set(self._runner_jobs()) - self.runner_jobs:
            job = os.path.join(self.runner, name)
            pids = _cgroup_pids(job)
            if pids:
                leaked += [(pid, _cmdline(pid)) for pid in pids]
                cgroup.JobCgroup(job).signal_all(9)
        if leaked:
            children = {pid for pid, _ in leaked if _ppid(pid) == os.getpid()}
            cgroup.remove_tree(path, wait_s=LEAK_WAIT_S)
            _reap(children)
        else:
            for sub, dirs, _ in os.walk(path, topdown=False):
                for d in dirs:
                    cgroup.remove_tree(os.path.join(sub, d))
            try:
                os.rmdir(path)
            except OSError:
                cgroup.remove_tree(path, wait_s=LEAK_WAIT_S)
        return leaked

    def _rescue_api_server(self, path: str) -> None:
        """reaper's own fork server (reaper.api) outlives tests by design: keep it, and
        its idle spare supervisor, in the runner."""
        pid = _api_server_pid()
        if pid is None:
            return
        from reaper import cgroup
        from reaper.procfs import read
        try:
            here = [int(p) for p in read(os.path.join(path, "cgroup.procs")).split()]
        except OSError:
            return
        for p in [pid] + _api_spares(pid, here):
            if p in here:
                cgroup.write(os.path.join(self.runner, "cgroup.procs"), str(p))

    def close(self) -> None:
        from reaper import cgroup
        if self.current is not None:
            self.leave()
        try:
            cgroup.write(os.path.join(self.parent, "cgroup.procs"), "0")
        except OSError:
            pass
        cgroup.remove_tree(self.root, wait_s=LEAK_WAIT_S)


class TreeJobs:
    """Fallback: pytest is a subreaper; a test's leftovers are its new descendants."""

    def __init__(self, reason: str) -> None:
        import _prctl  # type: ignore[import-not-found]  # python-prctl ships no stubs
        _prctl.prctl(_prctl.PR_SET_CHILD_SUBREAPER, 1)
        self.reason = reason
        self.before: Set[Tuple[int, int]] = set()

    def describe(self) -> str:
        return (f"each test as a process tree below pytest (a subreaper), because {self.reason}; "
                "leftovers fail the test and are killed")

    def enter(self, name: str) -> None:
        self.before = set(_descendants(os.getpid()))

    def leave(self) -> List[Tuple[int, str]]:
        server = _api_server_pid()
        new = [key for key in _descendants(os.getpid()) if key not in self.before and key[0] != server]
        if server is not None:
            spares = _api_spares(server, [pid for pid, _ in new])
            new = [key for key in new if key[0] not in spares]
        _reap_zombies()
        # reaper.api's supervisors (children of its fork server) are not leaks
        # themselves; their jobs are.  Killing the job lets the supervisor collect
        # it, remove its cgroup and exit; SIGKILLing it would orphan the cgroup.
        supervisors = [key for key in new if server is not None and _ppid(key[0]) == server]
        rest = [key for key in new if key not in supervisors]
        leaked = [(pid, _cmdline(pid)) for pid, _ in rest if _state(pid) not in ("Z", None)]
        if leaked:
            _signal_pinned(rest, ("SIGSTOP", "SIGKILL"))
        if supervisors:
            if not _signal_pinned(supervisors, ()):
                _signal_pinned(supervisors, ("SIGKILL",))
        _reap_zombies()
        return leaked

    def close(self) -> None:
        pass


def _api_server_pid() -> Optional[int]:
    """The pid of reaper.api's fork server in this process, if one was started."""
    import sys
    api = sys.modules.get("reaper.api")
    server = getattr(api, "_server", None)
    proc = getattr(server, "proc", None)
    if proc is None or getattr(server, "owner", None) != os.getpid():
        return None
    return int(proc.pid)


def _api_spares(server: int, pids: Iterable[int]) -> List[int]:
    """Those of `pids` that are the fork server's idle spare supervisor
    (reaper.forkserver names it in /proc/PID/comm)."""
    from reaper.forkserver import SPARE_COMM
    from reaper.procfs import read
    spares = []
    for pid in pids:
        try:
            if _ppid(pid) == server and read(f"/proc/{pid}/comm").strip() == SPARE_COMM.encode():
                spares.append(pid)
        except OSError:
            pass
    return spares


def _signal_pinned(procs: List[Tuple[int, int]], signals: Tuple[str, ...]) -> bool:
    """Send each signal to every (pid, start time) still alive, through pidfds (a pid
    reused meanwhile is never signalled); then wait, bounded, for them to exit.
    SIGSTOP first means none of them can fork meanwhile.  True if all exited."""
    import signal
    pidfds = {}
    for pid, start in procs:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        if _starttime(pid) == start:
            pidfds[pid] = fd
        else:
            os.close(fd)
    for name in signals:
        for fd in pidfds.values():
            try:
                signal.pidfd_send_signal(fd, getattr(signal, name))
            except OSError:
                pass
    deadline = time.monotonic() + LEAK_WAIT_S
    exited = True
    for fd in pidfds.values():
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            exited = False
        os.close(fd)
    return exited


def _cgroup_pids(path: str) -> List[int]:
    from reaper import inspect
    return sorted(set(inspect.cgroup_pids(path)))


def _stat(pid: int) -> Optional[List[str]]:
    from reaper import procfs
    try:
        st = procfs.fields(pid)
    except OSError:
        return None
    return None if st is None else [f.decode() for f in st]


def _ppid(pid: int) -> Optional[int]:
    st = _stat(pid)
    return None if st is None else int(st[1])


def _state(pid: int) -> Optional[str]:
    st = _stat(pid)
    return None if st is None else st[0]


def _starttime(pid: int) -> Optional[int]:
    st = _stat(pid)
    return None if st is None else int(st[19])


def _descendants(root: int) -> List[Tuple[int, int]]:
    children: Dict[int, List[Tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                children.setdefault(int(st[1]), []).append((int(entry), int(st[19])))
    found: List[Tuple[int, int]] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child[0])
    return found


def _reap(pids: Any) -> None:
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _reap_zombies() -> None:
    """Reap children of pytest that are zombies (orphans a subreaper inherited)."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[0] == "Z" and int(st[1]) == me:
                _reap([int(entry)])


def _choose() -> Any:
    if os.environ.get("REAPER_PYTEST_NO_CGROUP"):
        return TreeJobs("REAPER_PYTEST_NO_CGROUP is set")
    from reaper import containment
    _, parent, problem = containment.probe()
    if problem is None and parent is not None:
        try:
            return CgroupJobs(parent)
        except OSError as e:
            problem = f"cannot make a cgroup under {parent}: {e.strerror}"
    return TreeJobs(problem or "no cgroup2 hierarchy")


# -- hooks ---------------------------------------------------------------------------

_jobs: Any = None
_LEAK_KEY = pytest.StashKey[List[Tuple[int, str]]]()


def pytest_configure(config: pytest.Config) -> None:
    global _jobs
    config.addinivalue_line("markers", "reaper_allow_leftovers: processes this test leaves "
                            "behind are collected but do not fail it")
    if _jobs is None:
        _jobs = _choose()


def pytest_unconfigure(config: pytest.Config) -> None:
    global _jobs
    if _jobs is not None:
        _jobs.close()
        _jobs = None


def pytest_report_header(config: pytest.Config) -> str:
    return "reaper: " + (_jobs.describe() if _jobs is not None else "inactive")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    if _jobs is not None:
        _jobs.enter(item.name)
    yield


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: Optional[pytest.Item]) -> Any:
    yield
    if _jobs is not None:
        item.stash[_LEAK_KEY] = _jobs.leave()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    if call.when != "teardown":
        return
    leaked = item.stash.get(_LEAK_KEY, [])
    if not leaked or item.get_closest_marker("reaper_allow_leftovers") is not None:
        return
    report = outcome.get_result()
    lines = [f"reaper: this test left {len(leaked)} process(es) running; they have been killed:"]
    lines += [f"  {pid}: {cmd}" for pid, cmd in leaked]
    report.outcome = "failed"
    report.longrepr = "\n".join(lines)

