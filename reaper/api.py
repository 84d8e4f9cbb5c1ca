"""The Python API: run a command, or hold a job, and get back only when all of it is gone.

    result = reaper.run(["make", "test"], timeout=600, capture_output=True)
    with reaper.Job(["./server", "--port", "8000"]) as job:
        ...                     # leaving the block stops and collects the whole job

Every job is supervised exactly as `reaper exec` supervises it (same options,
containment, stop ladder and exit codes), by a supervisor in a process of its
own: reaper.forkserver explains how it is started without forking the caller,
how it dies with the caller, and the channel it reports on.  This module is
the caller's side: arguments, descriptors, the channel, results, exceptions.

Waiting is on the channel, never on pipes: `run(capture_output=True)` returns
as soon as the supervisor reports the job collected, even if a grandchild had
inherited stdout (it was part of the job, so it has been killed), and then
drains what the pipes hold without waiting for EOF.

What it deliberately does not do: make the caller a subreaper, call waitpid
on anything but its own fork server, or fork the caller (subprocess starts the
server with vfork/exec and no preexec_fn, which is safe in threaded programs).
"""

from __future__ import annotations

import json
import os
import selectors
import signal as _signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import IO, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from reaper.errors import (EXIT_FAILURE, EXIT_NOEXEC, EXIT_NOTFOUND, EXIT_TIMEOUT,
                           ReaperError)

__all__ = ["run", "Job", "Result", "ProcessInfo", "PIPE", "DEVNULL", "STDOUT",
           "ReaperError", "UsageError", "CommandNotFound", "CommandNotExecutable",
           "JobTimeout", "JobFailed", "SupervisorLost", "WaitTimeout"]

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT

StrPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
Stream = Union[None, int, IO[Any]]


# -- exceptions: the same meaning as the CLI's exit codes (reaper.errors) --------------

class UsageError(ReaperError, ValueError):
    """Bad arguments (the CLI's 125, "bad usage")."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_FAILURE)


class CommandNotFound(ReaperError):
    """The command does not exist (the CLI's 127)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_NOTFOUND)


class CommandNotExecutable(ReaperError):
    """The command exists but cannot be executed (the CLI's 126)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_NOEXEC)


class JobTimeout(ReaperError):
    """run(check=True): the timeout expired and the job was stopped (the CLI's 124)."""

    def __init__(self, result: "Result") -> None:
        super().__init__(f"{_cmd(result.args)}: timed out after {result.timeout:g}s; "
                         "the whole job was stopped", EXIT_TIMEOUT)
        self.result = result


class JobFailed(ReaperError):
    """run(check=True): the main process failed; `code` is what `reaper exec` would exit with."""

    def __init__(self, result: "Result") -> None:
        how = (f"died of signal {result.signal}" if result.signal is not None
               else f"exited with status {result.returncode}")
        super().__init__(f"{_cmd(result.args)}: {how}", result.exit_code)
        self.result = result


class SupervisorLost(ReaperError):
    """The job's supervisor died (e.g. SIGKILLed); the job was collected through its cgroup."""


class WaitTimeout(TimeoutError):
    """Job.wait(timeout) returned before the job ended (the job keeps running)."""


_START_ERRORS = {EXIT_NOTFOUND: CommandNotFound, EXIT_NOEXEC: CommandNotExecutable}


def _cmd(args: Sequence[str]) -> str:
    return " ".join(args)[:200]


# -- results ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Result:
    """How a job ended.  Only returned once nothing of the job is left."""

    args: List[str]
    returncode: int             # exit status of the main process, or -N if signal N killed it
    signal: Optional[int]       # N if the main process died of signal N, else None
    timed_out: bool             # the timeout expired and the job was stopped
    stdout: Optional[Union[bytes, str]] = None
    stderr: Optional[Union[bytes, str]] = None
    stats: Optional[Dict[str, Any]] = None     # accounting, as `reaper exec --stats-json` writes it
    pid: Optional[int] = None                  # the main process (gone now)
    containment: Optional[str] = None          # cgroup, pgroup (pidns: see `pidns`)
    pidns: bool = False
    timeout: Optional[float] = field(default=None, repr=False)

    @property
    def exit_code(self) -> int:
        """What `reaper exec` would have exited with: N, 128+N, or 124."""
        if self.timed_out:
            return EXIT_TIMEOUT
        return 128 + self.signal if self.signal is not None else self.returncode

    def check_returncode(self) -> None:
        """Raise JobTimeout or JobFailed unless the job succeeded."""
        if self.timed_out:
            raise JobTimeout(self)
        if self.returncode != 0:
            raise JobFailed(self)


@dataclass(frozen=True)
class ProcessInfo:
    """One process of a running job."""

    pid: int
    ppid: int
    argv: List[str]
    main: bool              # the job's main process
    left_session: bool      # it called setsid(): process-group kills miss it
    left_group: bool        # it changed its process group
    orphan: bool            # its parent died; it was re-parented to the supervisor


class _JobView:
    """What reaper.inspect and reaper.stats read of a registry entry, from the channel."""

    def __init__(self, started: Dict[str, Any]) -> None:
        self.entry = started
        self.pid = int(started["supervisor"])
        self.cgroup = started.get("cgroup")
        self.name = started.get("name", "")


# -- the fork server (one per calling process) ------------------------------------------

class _Server:
    def __init__(self) -> None:
        self.ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from reaper.forkserver import serve; sys.exit(serve(int(sys.argv[2])))")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, root, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                start_new_session=True, close_fds=True)
        except OSError as e:
            self.ctl.close()
            raise ReaperError(f"cannot start the supervisor process ({sys.executable}): {e.strerror}")
        finally:
            theirs.close()
        self.owner = os.getpid()

    def submit(self, fds: Sequence[int]) -> None:
        socket.send_fds(self.ctl, [b"job"], list(fds))

    def close(self) -> None:
        self.ctl.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


_server: Optional[_Server] = None
_server_lock = threading.Lock()
_live_channels: "weakref.WeakSet[_Channel]" = weakref.WeakSet()
_atexit_registered = False


def _close_server() -> None:
    """At exit: let the fork server go (EOF) and wait for it, so nothing of ours outlives us."""
    global _server
    if _server is not None and _server.owner == os.getpid():
        _server.close()
    _server = None


def _submit(fds: Sequence[int]) -> None:
    global _server, _atexit_registered
    with _server_lock:
        for attempt in (1, 2):
            if _server is None or _server.owner != os.getpid() or _server.proc.poll() is not None:
                if _server is not None and _server.owner == os.getpid():
                    _server.ctl.close()
                _server = _Server()
                if not _atexit_registered:
                    import atexit
                    atexit.register(_close_server)
                    _atexit_registered = True
            try:
                _server.submit(fds)
                return
            except OSError:
                if attempt == 2:
                    raise ReaperError("the supervisor process does not accept jobs")
                _server.ctl.close()
                _server = None


def _after_fork_in_child() -> None:
    # A fork of the caller must not keep the caller's supervisors alive after
    # the caller dies: drop its copies of the control socket and the channels.
    global _server
    if _server is not None:
        try:
            _server.ctl.close()
        except OSError:
            pass
        _server = None
    for chan in list(_live_channels):
        chan.sock.close()


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the channel -------------------------------------------------------------------------

class _Channel:
    """The caller's end of one job's channel: JSON lines in, JSON lines out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.started: Optional[Dict[str, Any]] = None
        self.end: Optional[Dict[str, Any]] = None
        self.eof = False
        _live_channels.add(self)

    def fileno(self) -> int:
        return self.sock.fileno()

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            event = json.loads(line)
            if event.get("event") == "started":
                self.started = event
            elif event.get("event") == "end":
                self.end = event

    def send(self, obj: Dict[str, Any]) -> bool:
        if self.end is not None or self.eof:
            return False
        try:
            self.sock.sendall((json.dumps(obj) + "\n").encode())
            return True
        except OSError:
            return False

    def close(self) -> None:
        self.sock.close()
        _live_channels.discard(self)


# -- arguments ---------------------------------------------------------------------------

def _argv(argv: Sequence[StrPath]) -> List[str]:
    if isinstance(argv, (str, bytes, os.PathLike)):
        raise UsageError("argv must be a list of arguments, e.g. ['ls', '-l'], not a single string")
    try:
        out = [os.fsdecode(a) for a in argv]
    except TypeError as e:
        raise UsageError(f"argv: {e}") from None
    if not out:
        raise UsageError("argv is empty: no command given")
    if any("\0" in a for a in out):
        raise UsageError("argv: arguments must not contain NUL bytes")
    return out


def _seconds(value: Any, what: str, allow_none: bool = True) -> Optional[float]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{what}: expected seconds as a number, not {value!r}")
    if not 0 <= value < float("inf"):
        raise UsageError(f"{what}: expected a finite number of seconds >= 0, not {value!r}")
    return float(value)


_VALID_SIGNALS = frozenset(int(s) for s in _signal.valid_signals())


def _signum(value: Any, what: str) -> int:
    if isinstance(value, str):
        from reaper.cli import parse_signal
        try:
            return int(parse_signal(value, what))
        except ReaperError as e:
            raise UsageError(str(e)) from None
    if isinstance(value, bool) or not isinstance(value, int) or value not in _VALID_SIGNALS:
        raise UsageError(f"{what}: unknown signal {value!r}")
    return int(value)


def _exec_args(argv: List[str], timeout: Optional[float], grace: float, stop_signal: int,
               name: Optional[str], containment: str, wait_all: bool,
               limits: Mapping[str, Any]) -> List[str]:
    args = [f"--grace={grace!r}", f"--stop-signal={stop_signal}", f"--containment={containment}"]
    if timeout is not None:
        args.append(f"--timeout={timeout!r}")
    if name is not None:
        if not isinstance(name, str):
            raise UsageError(f"name: expected a string, not {name!r}")
        from reaper.cli import check_name
        try:
            check_name(name)
        except ReaperError as e:
            raise UsageError(str(e)) from None
        args.append(f"--name={name}")
    if wait_all:
        args.append("--wait-all")
    for key, value in limits.items():
        if value is not None:
            args.append(f"--{key.replace('_', '-')}={value}")
    return args + ["--"] + argv


class _Stdio:
    """The three descriptors a job gets, and the caller's ends of any pipes."""

    def __init__(self, stdin: Stream, stdout: Stream, stderr: Stream) -> None:
        self.send: List[int] = []
        self.close_after: List[int] = []
        self.ours: Dict[int, int] = {}      # 0/1/2 -> our end of a pipe
        try:
            for target, spec in ((0, stdin), (1, stdout), (2, stderr)):
                self.send.append(self._one(target, spec))
        except BaseException:
            self.abandon()
            raise

    def _one(self, target: int, spec: Stream) -> int:
        if spec is None:
            try:
                os.fstat(target)
                return target
            except OSError:
                spec = DEVNULL
        if spec == STDOUT:
            if target != 2:
                raise UsageError("STDOUT is only valid for stderr")
            return self.send[1]
        if spec == DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            self.close_after.append(fd)
            return fd
        if spec == PIPE:
            r, w = os.pipe()
            mine, theirs = (w, r) if target == 0 else (r, w)
            self.ours[target] = mine
            self.close_after.append(theirs)
            return theirs
        if isinstance(spec, int) and not isinstance(spec, bool):
            if spec < 0:
                raise UsageError(f"invalid file descriptor {spec}")
            return spec
        if hasattr(spec, "fileno"):
            return spec.fileno()
        raise UsageError(f"stdin/stdout/stderr: expected None, PIPE, DEVNULL, a descriptor or a file, "
                         f"not {spec!r}")

    def sent(self) -> None:
        for fd in self.close_after:
            os.close(fd)
        self.close_after = []

    def abandon(self) -> None:
        self.sent()
        for fd in self.ours.values():
            os.close(fd)
        self.ours = {}


def _to_result(args: List[str], chan: _Channel, timeout: Optional[float],
               out: Optional[Union[bytes, str]] = None,
               err: Optional[Union[bytes, str]] = None) -> Result:
    end = chan.end or {}
    started = chan.started or {}
    status = end.get("status")
    sig: Optional[int] = None
    if status is None:
        code = int(end.get("code", EXIT_FAILURE))
        returncode = code
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        returncode = -sig
    else:
        returncode = os.WEXITSTATUS(status)
        if started.get("pidns") and 128 < returncode < 128 + 65:
            # The namespace's init reports the command's death by signal N as 128+N.
            sig, returncode = returncode - 128, -(returncode - 128)
    return Result(args=args, returncode=returncode, signal=sig,
                  timed_out=bool(end.get("timed_out")), stdout=out, stderr=err,
                  stats=end.get("stats"), pid=started.get("pid"),
                  containment=started.get("containment"), pidns=bool(started.get("pidns")),
                  timeout=timeout)


def _collect_abandoned(cgroup_path: Optional[str]) -> bool:
    """The supervisor died: kill and remove its job cgroup (only if its lock is free)."""
    if not cgroup_path:
        return False
    import fcntl
    from reaper import cgroup
    try:
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return True     # already removed
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    try:
        return bool(cgroup.remove_tree(cgroup_path, wait_s=10.0))
    finally:
        os.close(fd)


# -- the job -----------------------------------------------------------------------------

class Job:
    """A running job; leaving `with` stops it and waits until nothing of it is left.

    job.pid is the main process (the pid namespace's init with pidns).  The
    job is started when the object is created; start-up failures raise
    CommandNotFound, CommandNotExecutable, UsageError or ReaperError.
    """

    def __init__(self, argv: Sequence[StrPath], *, timeout: Optional[float] = None,
                 grace: float = 10.0, stop_signal: Union[int, str] = _signal.SIGTERM,
                 stdin: Stream = None, stdout: Stream = None, stderr: Stream = None,
                 cwd: Optional[StrPath] = None, env: Optional[Mapping[str, str]] = None,
                 name: Optional[str] = None, containment: str = "auto",
                 wait_all: bool = False, pidns: Optional[bool] = None,
                 memory_max: Union[int, str, None] = None, pids_max: Optional[int] = None,
                 cpu_max: Union[float, str, None] = None, stats: bool = True,
                 _await_start: bool = True) -> None:
        self.args = _argv(argv)
        self.timeout = _seconds(timeout, "timeout")
        grace_s = _seconds(grace, "grace", allow_none=False)
        assert grace_s is not None
        self.grace = grace_s
        self.stop_signal = _signum(stop_signal, "stop_signal")
        if containment not in ("auto", "cgroup", "pgroup"):
            raise UsageError(f"containment: expected 'auto', 'cgroup' or 'pgroup', not {containment!r}")
        if pidns not in (None, True, False):
            raise UsageError(f"pidns: expected None, True or False, not {pidns!r}")
        exec_args = _exec_args(self.args, self.timeout, self.grace, self.stop_signal, name,
                               containment, wait_all,
                               {"memory_max": memory_max, "pids_max": pids_max, "cpu_max": cpu_max})
        if pidns:
            exec_args.insert(0, "--pidns")
        request: Dict[str, Any] = {
            "args": exec_args,
            "cwd": None if cwd is None else os.fsdecode(os.path.abspath(cwd)),
            "env": dict(os.environ) if env is None else {
                os.fsdecode(k): os.fsdecode(v) for k, v in env.items()},
            "pidns": "auto" if pidns is None and containment != "cgroup" else None,
            "stats": bool(stats),
        }
        self._lock = threading.RLock()
        self._result: Optional[Result] = None
        self._lost_error: Optional[ReaperError] = None
        self._stdio = _Stdio(stdin, stdout, stderr)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._chan = _Channel(mine)
        try:
            _submit([theirs.fileno()] + self._stdio.send)
        except BaseException:
            self._stdio.abandon()
            self._chan.close()
            raise
        finally:
            theirs.close()
            self._stdio.sent()
        self.stdin: Optional[IO[bytes]] = self._open(0, "wb")
        self.stdout: Optional[IO[bytes]] = self._open(1, "rb")
        self.stderr: Optional[IO[bytes]] = self._open(2, "rb")
        self._chan.send(request)
        if _await_start:
            self._await_start()

    def _open(self, target: int, mode: str) -> Optional[IO[bytes]]:
        fd = self._stdio.ours.get(target)
        return None if fd is None else open(fd, mode, buffering=0)

    # -- waiting on the channel --------------------------------------------------------

    def _pump(self, deadline: Optional[float], until: str) -> bool:
        """Read the channel until `until` ('started' or 'end') or the deadline."""
        chan = self._chan
        sel = selectors.DefaultSelector()
        try:
            sel.register(chan.sock, selectors.EVENT_READ)
            while not self._reached(until):
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if sel.select(left):
                    chan.on_readable()
                elif deadline is not None and time.monotonic() >= deadline:
                    return False
        finally:
            sel.close()
        return True

    def _reached(self, until: str) -> bool:
        """'started': the job runs (or failed to start); 'end': its supervisor has exited
        (EOF after the end event), so when run() returns no process of reaper's is left."""
        chan = self._chan
        if chan.eof:
            return True
        if until == "started":
            return chan.started is not None or chan.end is not None
        return False

    def _await_start(self) -> None:
        try:
            self._pump(None, "started")
        except BaseException:
            # Interrupted (Ctrl-C) while starting: the stop request waits in the
            # channel until the supervisor reads it; collect before re-raising.
            try:
                self._wait_firmly({"op": "stop", "signal": self.stop_signal, "grace": self.grace})
            except ReaperError:
                pass
            raise
        self._check_started()

    def _check_started(self) -> None:
        if self._chan.started is None:
            self._finish()
            raise self._start_error()

    def _start_error(self) -> ReaperError:
        end = self._chan.end
        if end is None:
            return ReaperError("the supervisor process died before the job started")
        message = end.get("error") or "the job could not be started"
        code = int(end.get("code", EXIT_FAILURE))
        cls = _START_ERRORS.get(code)
        if cls is not None:
            return cls(message)
        if code == EXIT_FAILURE and ("invalid" in message or "unknown" in message):
            return UsageError(message)
        return ReaperError(message, code)

    def _finish(self, out: Optional[Union[bytes, str]] = None,
                err: Optional[Union[bytes, str]] = None) -> Optional[Result]:
        """The channel said end (or died); build the result once."""
        if self._result is not None:
            return self._result
        chan = self._chan
        if chan.end is None:
            cgroup_path = (chan.started or {}).get("cgroup")
            collected = _collect_abandoned(cgroup_path)
            chan.close()
            self._lost_error = SupervisorLost(
                "the job's supervisor died" + (
                    "; the job was killed and collected through its cgroup" if collected else
                    "; its job may not have been collected (no cgroup to kill)"))
            return None
        chan.close()
        if chan.started is not None:
            self._result = _to_result(self.args, chan, self.timeout, out, err)
        return self._result

    # -- public --------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The main process's pid (valid while the job runs; reaped by the supervisor)."""
        started = self._chan.started
        assert started is not None
        return int(started["pid"])

    @property
    def supervisor_pid(self) -> int:
        started = self._chan.started
        assert started is not None
        return int(started["supervisor"])

    @property
    def cgroup(self) -> Optional[str]:
        """The job's cgroup directory, or None without cgroup containment."""
        started = self._chan.started
        return None if started is None else started.get("cgroup")

    @property
    def containment(self) -> str:
        started = self._chan.started
        return "" if started is None else str(started.get("containment"))

    @property
    def result(self) -> Optional[Result]:
        """The result once the job has ended (polls the channel without blocking)."""
        with self._lock:
            if self._result is None and self._lost_error is None:
                self._pump(time.monotonic(), "end")
                if self._reached("end"):
                    self._finish()
            return self._result

    @property
    def returncode(self) -> Optional[int]:
        r = self.result
        return None if r is None else r.returncode

    def wait(self, timeout: Optional[float] = None) -> Result:
        """Wait until the whole job has ended and been collected; WaitTimeout if it has not."""
        t = _seconds(timeout, "timeout")
        deadline = None if t is None else time.monotonic() + t
        with self._lock:
            if self._result is None and self._lost_error is None:
                if not self._pump(deadline, "end"):
                    raise WaitTimeout(f"{_cmd(self.args)}: still running after {t:g}s")
                self._finish()
            if self._lost_error is not None:
                raise self._lost_error
            if self._result is None:
                raise self._start_error()
            return self._result

    def signal(self, sig: Union[int, str]) -> bool:
        """Send `sig` to the job (its process group, or every process once the main one is gone).

        Returns False if the job has already ended.  TERM, INT and QUIT do not
        start a stop here; use stop() for that.
        """
        return self._chan.send({"op": "signal", "signal": _signum(sig, "signal")})

    def stop(self, grace: Optional[float] = None, signal: Union[int, str, None] = None) -> Result:
        """Send the stop signal to the whole job, SIGKILL after `grace`, wait until it is collected."""
        g = _seconds(grace, "grace")
        sig = self.stop_signal if signal is None else _signum(signal, "signal")
        return self._wait_firmly({"op": "stop", "signal": sig, "grace": self.grace if g is None else g})

    def kill(self) -> Result:
        """SIGKILL the whole job now and wait until it is collected."""
        return self._wait_firmly({"op": "kill"})

    def _wait_firmly(self, request: Optional[Dict[str, Any]] = None) -> Result:
        """Send `request`, wait for the end; a Ctrl-C meanwhile escalates to SIGKILL but
        still waits, and is re-raised once the job is collected."""
        interrupted: Optional[BaseException] = None
        while True:
            try:
                if request is not None:
                    self._chan.send(request)
                    request = None
                result = self.wait()
                break
            except KeyboardInterrupt as e:
                interrupted = e
                request = {"op": "kill"}
        if interrupted is not None:
            raise interrupted
        return result

    def _view(self) -> Optional["_JobView"]:
        started = self._chan.started
        if started is None or self._result is not None or self._lost_error is not None:
            return None
        return _JobView(started)

    def processes(self) -> List[ProcessInfo]:
        """The job's live processes now (the supervisor excluded), as `reaper ps` shows them."""
        view = self._view()
        if view is None:
            return []
        from reaper import inspect
        return [ProcessInfo(pid=p["pid"], ppid=p["ppid"], argv=p["argv"], main=p["main"],
                            left_session=p["escaped_session"], left_group=p["escaped_group"],
                            orphan=p["orphan"])
                for p in inspect.processes(view)]

    def ports(self) -> List[Dict[str, Any]]:
        """The job's sockets, listening and connected, as `reaper ports --json` lists them."""
        view = self._view()
        if view is None:
            return []
        from reaper import inspect
        return list(inspect.ports(view, inspect.processes(view))[0])

    def stats(self) -> Dict[str, Any]:
        """Accounting so far (CPU, memory, processes), as `reaper stats --json` shows it."""
        view = self._view()
        if view is None:
            return dict(self._result.stats or {}) if self._result is not None else {}
        from reaper import inspect, stats
        return dict(stats.live(view, inspect.processes(view)))

    def close(self) -> Result:
        """Stop the job if it still runs, wait until it is collected, close our pipes."""
        try:
            running = self._result is None and self._lost_error is None and not self._reached("end")
            return self._wait_firmly({"op": "stop", "signal": self.stop_signal, "grace": self.grace}
                                     if running else None)
        finally:
            for stream in (self.stdin, self.stdout, self.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.close()
        except (SupervisorLost, KeyboardInterrupt):
            # A Ctrl-C during the stop has killed the job and still waited for it;
            # if the block is already leaving by an exception, that one stays the only one.
            if exc[0] is None:
                raise

    def __repr__(self) -> str:
        state = "running" if self._result is None else f"ended {self._result.returncode}"
        return f"<reaper.Job {_cmd(self.args)!r} {state}>"

    # -- communicate, for run() --------------------------------------------------------

    def _io(self, data: Optional[bytes]) -> "_IO":
        streams = {0: self.stdin, 1: self.stdout, 2: self.stderr}
        return _IO(self._stdio.ours, streams, data)

    def _communicate(self, data: Optional[bytes]) -> Tuple[Optional[bytes], Optional[bytes]]:
        """Feed stdin, read stdout/stderr, until the supervisor reports the end."""
        io = self._io(data)
        chan = self._chan
        sel = selectors.DefaultSelector()
        try:
            for fd in io.readers:
                sel.register(fd, selectors.EVENT_READ)
            if io.writer is not None:
                sel.register(io.writer, selectors.EVENT_WRITE)
            sel.register(chan.sock, selectors.EVENT_READ)
            while not self._reached("end"):
                for key, _ in sel.select():
                    if key.fd == chan.fileno():
                        chan.on_readable()
                    elif not io.on_ready(key.fd):
                        sel.unregister(key.fd)
        finally:
            sel.close()
        return io.drain()


class _IO:
    """The caller's ends of a job's pipes while run()/arun() feed and read them."""

    def __init__(self, ours: Dict[int, int], streams: Dict[int, Optional[IO[bytes]]],
                 data: Optional[bytes]) -> None:
        self.streams = streams
        self.bufs: Dict[int, List[bytes]] = {}
        self.readers: Dict[int, int] = {}       # fd -> 1 or 2
        for target in (1, 2):
            fd = ours.get(target)
            if fd is not None:
                self.bufs[target] = []
                self.readers[fd] = target
        self.writer = ours.get(0)
        self.view = memoryview(data or b"")
        if self.writer is not None:
            if self.view:
                os.set_blocking(self.writer, False)
            else:
                self._close_stdin()

    def _close_stdin(self) -> None:
        stream = self.streams.get(0)
        if stream is not None:
            stream.close()
        self.writer = None

    def on_ready(self, fd: int) -> bool:
        """Move data for a ready fd; False when that fd is done."""
        if fd in self.readers:
            chunk = os.read(fd, 65536)
            if chunk:
                self.bufs[self.readers[fd]].append(chunk)
                return True
            return False
        try:
            n = os.write(fd, self.view[:65536])
            self.view = self.view[n:]
        except BlockingIOError:
            return True
        except BrokenPipeError:
            self.view = self.view[:0]
        if self.view:
            return True
        self._close_stdin()
        return False

    def drain(self) -> Tuple[Optional[bytes], Optional[bytes]]:
        """The job is collected: every writer of the pipes is dead, so what is left
        is in their buffers.  Read it without waiting for EOF (a copy of a write end
        leaked into some other process must not hang us)."""
        if self.writer is not None:
            self._close_stdin()
        for fd, target in self.readers.items():
            os.set_blocking(fd, False)
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                self.bufs[target].append(chunk)
        return (b"".join(self.bufs[1]) if 1 in self.bufs else None,
                b"".join(self.bufs[2]) if 2 in self.bufs else None)


def _run_streams(capture_output: bool, input: Union[bytes, str, None], stdin: Stream, stdout: Stream,
                 stderr: Stream) -> Tuple[Stream, Stream, Stream, Optional[bytes]]:
    """run()'s and arun()'s capture_output and input, as subprocess.run takes them:
    (stdin, stdout, stderr, the input as bytes or None)."""
    if capture_output:
        if stdout is not None or stderr is not None:
            raise UsageError("capture_output may not be used with stdout or stderr")
        stdout = stderr = PIPE
    if input is None:
        return stdin, stdout, stderr, None
    if stdin is not None:
        raise UsageError("input may not be used with stdin")
    if isinstance(input, str):
        return PIPE, stdout, stderr, input.encode()
    if isinstance(input, (bytes, bytearray, memoryview)):
        return PIPE, stdout, stderr, bytes(input)
    raise UsageError(f"input: expected bytes or str, not {type(input).__name__}")


def _with_output(result: Result, out: Optional[bytes], err: Optional[bytes], text: bool) -> Result:
    """The job's result with what run() captured, decoded if text."""
    if text:
        out_t = None if out is None else out.decode(errors="replace")
        err_t = None if err is None else err.decode(errors="replace")
        return Result(**{**result.__dict__, "stdout": out_t, "stderr": err_t})
    return Result(**{**result.__dict__, "stdout": out, "stderr": err})


def run(argv: Sequence[StrPath], *, timeout: Optional[float] = None, grace: float = 10.0,
        stop_signal: Union[int, str] = _signal.SIGTERM, input: Union[bytes, str, None] = None,
        capture_output: bool = False, check: bool = False, text: bool = False,
        stdin: Stream = None, stdout: Stream = None, stderr: Stream = None,
        cwd: Optional[StrPath] = None, env: Optional[Mapping[str, str]] = None,
        name: Optional[str] = None, containment: str = "auto", wait_all: bool = False,
        pidns: Optional[bool] = None, memory_max: Union[int, str, None] = None,
        pids_max: Optional[int] = None, cpu_max: Union[float, str, None] = None,
        stats: bool = True) -> Result:
    """Run argv as a job and return when nothing of it is left.

    `timeout` bounds the whole job: on expiry every process of it gets
    `stop_signal`, then SIGKILL after `grace`, and result.timed_out is True.
    With capture_output, returns as soon as the job is collected, even if a
    grandchild had inherited stdout.  check=True raises JobTimeout or JobFailed.
    """
    stdin, stdout, stderr, data = _run_streams(capture_output, input, stdin, stdout, stderr)
    job = Job(argv, timeout=timeout, grace=grace, stop_signal=stop_signal, stdin=stdin,
              stdout=stdout, stderr=stderr, cwd=cwd, env=env, name=name,
              containment=containment, wait_all=wait_all, pidns=pidns,
              memory_max=memory_max, pids_max=pids_max, cpu_max=cpu_max, stats=stats)
    with job:
        try:
            out, err = job._communicate(data)
        except BaseException:
            job.close()     # stop and collect before the exception leaves
            raise
        job.wait()
    result = _with_output(job.wait(), out, err, text)
    if check:
        result.check_returncode()
    return result
