"""The Python API's supervisors: a fork server, and the channel each job talks over.

A Python program that calls reaper.run() must not become a subreaper (its
waitpid(-1)-free `subprocess` calls would still be fine, but every orphan of
every job would become its child, and a subreaper that does not reap collects
zombies) and must not fork without exec (unsafe once it has threads).  So each
job gets a supervisor of its own in a separate process: exactly what
`reaper exec` runs (reaper.cli.cmd_exec, the same parsing, containment and
stop ladder), started fresh for every job.

Starting `python -m reaper exec` per job costs a Python interpreter start:
~40 ms of the ~120 ms that `reaper exec -- true` takes on the development
machine, against ~3.5 ms for subprocess.run(["true"]).  Instead the caller
starts this module once (posix_spawn-like, via subprocess: no preexec_fn), a
single-threaded server with reaper's modules already imported, and for each
job the server fork()s a supervisor (forking is safe here: the server has one
thread and no locks held).  The caller never forks.  The fork happens ahead of
the request: a *spare* supervisor waits for the next job's descriptors, and
the server forks the next spare once it has handed a job over, so a run does
not wait for a fork.

Protocol.  Per job the caller makes a socketpair (the *channel*) and sends the
server one datagram over the control socket, carrying four descriptors by
SCM_RIGHTS: the channel's far end, and the job's stdin, stdout, stderr.  The
server forks, and the child reads the request (one JSON line: `reaper exec`
arguments, cwd, environment) from the channel, so a request has no size limit
and the server never parses anything.  Then on the channel, one JSON object a
line:

  supervisor -> caller  {"event": "started", "pid", "supervisor", "containment", "cgroup"}
                        {"event": "end", "code", "status", "timed_out", "error"?, "stats"?}
  caller -> supervisor  {"op": "signal", "signal": N}
                        {"op": "stop", "signal": N, "grace": S}
                        {"op": "kill"}

Nothing of this touches the job's stdout or stderr.

Death with the caller.  The supervisor watches the channel in its poll loop:
EOF means every copy of the caller's end is closed, which the kernel does when
the caller dies however it dies (SIGKILL included), from whichever thread it
made the job.  The supervisor then runs its stop ladder and collects the job,
as if it had received SIGTERM.  (PR_SET_PDEATHSIG was rejected: it fires when
the *thread* that forked exits, which in a threaded caller is not the caller's
death.)  The server likewise exits at EOF on its control socket; supervisors
do not depend on it after the fork.  If a supervisor itself is SIGKILLed, its
job's cgroup is left locked-free, and the caller (or any `reaper exec`/`gc`)
kills and removes it; without a cgroup the API asks for --pidns, whose init
dies with the supervisor.
"""

import json
import os
import socket
import _signal
import sys
import time

from reaper.errors import EXIT_FAILURE, ReaperError

SIGKILL = _signal.SIGKILL


def _send(fd, obj):
    data = (json.dumps(obj) + "\n").encode()
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass        # the caller is gone; the job is being stopped for that reason


class Control:
    """The supervisor's end of one job's channel (see reaper.supervisor's `control`)."""

    def __init__(self, fd, want_stats=False):
        self.fd = fd
        self.buf = b""
        self.sup = None
        self.want_stats = want_stats
        self.hooks = None

    def started(self, sup):
        self.sup = sup
        # Accounting as --stats-json would do it, kept in memory and sent with
        # the end event (no file to write, read back and remove).
        self.hooks = next((w for w in sup.watchers if hasattr(w, "accounting")), None)
        if self.want_stats and self.hooks is not None and self.hooks.accounting is None:
            from reaper import stats
            self.hooks.accounting = stats.Accounting(sup.containment)
        job = getattr(sup.containment, "job", None)
        event = {"event": "started", "pid": sup.pid, "main_pid": sup.pid, "supervisor": os.getpid(),
                 "containment": sup.containment.name, "pidns": sup.before_exec is not None,
                 "cgroup": job.path if job is not None else None,
                 "cgroup_ino": os.fstat(job.lock_fd).st_ino if job is not None else None,
                 "name": next((w.name for w in sup.watchers if hasattr(w, "registration")), None),
                 "started": time.time()}
        try:
            with open(f"/proc/{sup.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            event.update(main_starttime=int(fields[19]), pgid=int(fields[2]), sid=int(fields[3]))
        except (OSError, ValueError, IndexError):
            pass
        _send(self.fd, event)
        self._process(sup)      # requests that arrived with the job's description

    @property
    def fds(self):
        return (self.fd,)

    def on_readable(self, sup, fd):
        """Handle what the caller sent; False once the caller has gone (EOF)."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self._stop(sup, sup.stop_signal, None, "the Python caller has gone")
            return False
        self.buf += data
        self._process(sup)
        return True

    def _process(self, sup):
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            try:
                op = json.loads(line)
            except ValueError:
                continue
            self._do(sup, op)

    def _do(self, sup, op):
        what = op.get("op")
        if what == "signal":
            sup._forward(int(op["signal"]))
        elif what == "stop":
            self._stop(sup, int(op["signal"]), op.get("grace"), "asked by the Python caller")
        elif what == "kill":
            self._stop(sup, SIGKILL, 0, "asked by the Python caller")

    @staticmethod
    def _stop(sup, sig, grace_s, why):
        """The supervisor's own stop ladder; a second request (or grace 0) kills at once."""
        if sup.state != "killing":
            sup.request_stop(sig, None if grace_s is None else float(grace_s), why)


def _read_request(fd):
    buf = b""
    while b"\n" not in buf:
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    return json.loads(line), rest


_CGROUP_OK = False      # the server found at start that job cgroups can be made (_preload)


def _attempts(args, pidns_auto):
    """The `reaper exec` argument lists to try in turn.  The API's default (pidns
    "auto") needs the job to die with its supervisor: a job cgroup, else a pid
    namespace.  Where the server found cgroups usable, the cgroup is asked for
    explicitly, so that should it have stopped being usable the attempt fails
    before the job starts and the next one takes a pid namespace; this spares each
    run a probe of its own.  Last, neither (no namespaces here either): the job
    runs as `reaper exec` would run it, and the started event says so."""
    if not pidns_auto:
        return [args]
    if _CGROUP_OK and "--containment=auto" in args:
        i = args.index("--containment=auto")
        return [args[:i] + ["--containment=cgroup"] + args[i + 1:], ["--pidns"] + args, args]
    return [["--pidns"] + args, args]


def _set_environ(env):
    """os.environ = env, touching only what differs (the caller's is usually the same)."""
    for key in [k for k in os.environ if k not in env]:
        del os.environ[key]
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def supervise(fds):
    """In the forked child: become the job's supervisor.  Returns the exit status."""
    chan, stdio = fds[0], fds[1:4]
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
    for fd in set(stdio):
        if fd > 2:
            os.close(fd)
    try:
        got = _read_request(chan)
    except (OSError, ValueError):
        got = None
    if got is None:
        return EXIT_FAILURE     # the caller went away before the job started
    request, rest = got
    control = Control(chan, want_stats=bool(request.get("stats")))
    control.buf = rest
    code, error, status, timed_out = EXIT_FAILURE, None, None, False
    try:
        if request.get("cwd") is not None:
            try:
                os.chdir(request["cwd"])
            except OSError as e:
                raise ReaperError(f"cwd {request['cwd']!r}: {e.strerror}")
        if request.get("env") is not None:
            _set_environ(request["env"])
        from reaper import cli
        attempts = _attempts(list(request["args"]), request.get("pidns") == "auto")
        for n, args in enumerate(attempts, 1):
            try:
                code = cli.cmd_exec(args, control=control)
                break
            except ReaperError as e:
                # Only a containment that cannot be had, before the job started.
                if n == len(attempts) or control.sup is not None or \
                        not str(e).startswith(("--pidns", "--containment cgroup")):
                    raise
    except ReaperError as e:
        code, error = e.code, str(e)
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        code, error = EXIT_FAILURE, f"{e.strerror or e}{where}"
    except BaseException as e:     # noqa: B902 -- report anything, then exit
        code, error = EXIT_FAILURE, f"internal error: {e!r}"
    sup = control.sup
    if sup is not None:
        status, timed_out = sup.main_status, sup.timed_out
    end = {"event": "end", "code": code, "status": status, "timed_out": timed_out}
    if error is not None:
        end["error"] = error
    hooks = control.hooks
    if control.want_stats and hooks is not None and hooks.accounting is not None:
        try:
            end["stats"] = hooks.accounting.result(code, hooks.first_stop, hooks.leftovers)
        except (OSError, ValueError):
            pass
    # Let go of the job's stdout/stderr before saying "end", so a caller that
    # reads them sees EOF as soon as it has the result.
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    _send(chan, end)
    return 0


def _preload():
    """Import what every supervisor needs once, so that forks do not pay for it
    (with PYTHONDONTWRITEBYTECODE each import would compile the module again)."""
    import importlib
    for name in ("json", "resource", "reaper.stats", "reaper.cli", "reaper.containment",
                 "reaper.cgroup", "reaper.delegation", "reaper.pidns", "reaper.spawn",
                 "reaper._linux", "reaper.supervisor", "reaper.terminal", "reaper.jobhooks",
                 "reaper.registry", "reaper.control", "reaper.tree"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass        # an optional part (psutil for reaper.tree) or one this version lacks
    from reaper import spawn
    if spawn.clone3_backend() == "ctypes":
        importlib.import_module("ctypes")       # no extension built: clone3 through ctypes


def _recv_fds(sock):
    """One request and its descriptors, close-on-exec.  (socket.recv_fds ignores its
    flags argument in CPython 3.11, so MSG_CMSG_CLOEXEC is passed to recvmsg here:
    without it the job would inherit its own channel and keep it open.)"""
    msg, ancdata, _, _ = sock.recvmsg(64, socket.CMSG_LEN(4 * 4), socket.MSG_CMSG_CLOEXEC)
    fds = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int.from_bytes(data[i:i + 4], sys.byteorder, signed=True)
                    for i in range(0, len(data) - len(data) % 4, 4)]
    return msg, fds


def _become_supervisor(fds):
    """In a fork of the server: supervise one job, then exit (never returns)."""
    status = EXIT_FAILURE
    try:
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
        status = supervise(fds)
    finally:
        os._exit(status)


SPARE_COMM = "reaper-spare"     # a spare's name in /proc/PID/comm (reaper.pytest knows it)
_COMM = None                    # the server's own, which a spare takes back with a job


def _set_comm(name):
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name)
    except (OSError, TypeError):
        pass


def _fork_spare(ctl):
    """Fork the next job's supervisor ahead of its request: the fork (page tables of a
    Python process, ~1-3 ms) is then off the caller's critical path.  The spare waits
    on a socket of its own for the job's descriptors and exits at EOF (the server has
    gone).  Returns the server's end of that socket, or None if the fork failed."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        pid = os.fork()
    except OSError:
        mine.close()
        theirs.close()
        return None
    if pid == 0:
        try:
            ctl.close()
            mine.close()
            _set_comm(SPARE_COMM)
            msg, fds = _recv_fds(theirs)
            theirs.close()
            _set_comm(_COMM)
        except BaseException:
            os._exit(EXIT_FAILURE)
        if not msg or len(fds) != 4:
            os._exit(EXIT_FAILURE)
        _become_supervisor(fds)
    theirs.close()
    return mine


def serve(ctl_fd):
    """The server loop: hand each request to the spare supervisor, fork the next spare;
    until the caller closes the control socket."""
    ctl = socket.socket(fileno=ctl_fd)
    _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)    # supervisors are reaped by the kernel
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)     # a Ctrl-C is for the caller
    _preload()
    global _CGROUP_OK, _COMM
    try:
        with open("/proc/self/comm") as f:
            _COMM = f.read().strip()
    except OSError:
        pass
    try:
        from reaper import containment
        _CGROUP_OK = containment.probe().problem is None
    except Exception:
        _CGROUP_OK = False
    spare = _fork_spare(ctl)
    while True:
        try:
            msg, fds = _recv_fds(ctl)
        except InterruptedError:
            continue
        except OSError:
            return 0
        if not msg:
            for fd in fds:
                os.close(fd)
            return 0    # the caller has gone (a spare exits when `spare` closes)
        if len(fds) != 4:
            for fd in fds:
                os.close(fd)
            continue
        handed = False
        if spare is not None:
            try:
                socket.send_fds(spare, [b"job"], fds)
                handed = True
            except OSError:
                pass        # the spare died: fork one for this job instead
            spare.close()
            spare = None
        if not handed:
            try:
                pid = os.fork()
            except OSError:
                pid = None
            if pid == 0:
                ctl.close()
                _become_supervisor(fds)
            if pid is None:
                _send(fds[0], {"event": "end", "code": EXIT_FAILURE, "status": None,
                               "timed_out": False, "error": "the fork server cannot fork"})
        for fd in fds:
            os.close(fd)
        spare = _fork_spare(ctl)


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1])))
