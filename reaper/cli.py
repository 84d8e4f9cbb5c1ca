"""Command line: parse, dispatch, and turn failures into one line and an exit code.

The parser is hand-written on purpose: argparse costs ~7 ms of import on every
`reaper exec`, more than the rest of reaper's own start-up.  It accepts
`--opt value` and `--opt=value`; the command starts at `--` or at the first
word that is not an option.

This is the only module that prints errors or chooses exit codes (see
reaper.errors for the table).
"""

import os
import sys

from reaper.errors import EXIT_FAILURE, ReaperError

USAGE = """\
usage: reaper exec [OPTIONS] [--] CMD [ARG...]   run CMD; return when nothing of it is left
       reaper doctor [--json]                    what this machine offers, and what exec will use
       reaper gc [-v] [--cgroup-parent PATH]     collect jobs whose reaper was killed
       reaper ls [--json] [--all]                the running jobs of this user (root: of all)
       reaper ps|ports|stats NAME [--json]       a job's processes, sockets, resource use
       reaper kill NAME [--signal SIG] [--grace DURATION]   stop a job and wait until it is gone
       reaper --version
`reaper COMMAND --help` shows the options of COMMAND.
"""

EXEC_USAGE = """\
usage: reaper exec [OPTIONS] [--] CMD [ARG...]

Run CMD as a job; every process it starts is collected before reaper returns.

options:
  -v, --verbose          say which containment is used and why, and each step
  --name NAME            job name, used in the cgroup name reaper.<pid>.<NAME>
  --containment MODE     auto (default), cgroup or pgroup
  --cgroup-parent PATH   create the job cgroup here (default: reaper's own cgroup)
  --timeout DURATION     stop the job after DURATION and exit 124 (0: no limit)
  --grace DURATION       time every process gets between the stop signal and
                         SIGKILL (default 10s; 8s as PID 1, below the 10s of
                         docker/podman stop)
  --stop-signal SIG      signal for leftovers and on timeout (default TERM)
  --wait-all             after the main process exits, wait for the rest to exit
  --pidns                run the job in a new pid namespace (dies with reaper)
  --stats                print what the job cost on stderr at the end
  --stats-json FILE      write the same as JSON to FILE
  --memory-max SIZE      memory limit of the job cgroup (e.g. 512M, 1.5G)
  --pids-max N           process limit of the job cgroup
  --cpu-max CPUS         CPU bandwidth limit of the job cgroup (e.g. 1.5)
  --notify-ready         under systemd Type=notify: send READY=1 once the job started

DURATION: 1.5, 500ms, 10s, 2m, 1h.  Exit status: the job's; 128+N if it died of
signal N; 124 timeout; 125 reaper failed; 126 not executable; 127 not found.
"""

DOCTOR_USAGE = """\
usage: reaper doctor [--json]

Report what this machine offers reaper (kernel features, cgroup layout,
permissions) and which containment `reaper exec` would use, and why.
"""

GC_USAGE = """\
usage: reaper gc [-v] [--cgroup-parent PATH]

Kill and remove job cgroups whose reaper died (SIGKILL, OOM): only directories
reaper made, and only when their supervisor is verifiably gone.
"""

HELP = ("-h", "--help")
DEFAULT_GRACE = "10s"
PID1_GRACE = "8s"       # docker/podman stop wait 10s, Kubernetes 30s: finish first
MAX_DURATION_S = 10 * 366 * 86400.0

EXEC_FLAGS = {"-v": "verbose", "--verbose": "verbose", "--wait-all": "wait_all", "--pidns": "pidns",
              "--stats": "stats", "--notify-ready": "notify_ready"}
EXEC_VALUES = {"--name": "name", "--containment": "containment", "--cgroup-parent": "cgroup_parent",
               "--timeout": "timeout", "--grace": "grace", "--stop-signal": "stop_signal",
               "--stats-json": "stats_json", "--memory-max": "memory_max", "--pids-max": "pids_max",
               "--cpu-max": "cpu_max"}
UNITS = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))


def parse_duration(text, option):
    number, scale = text, 1.0
    for suffix, factor in UNITS:
        if text.endswith(suffix) and text[:-len(suffix)][-1:].isdigit():
            number, scale = text[:-len(suffix)], factor
            break
    try:
        value = float(number) * scale
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf") or number.strip() != number:
        raise ReaperError(f"{option}: invalid duration {text!r} (examples: 1.5, 500ms, 10s, 2m)")
    if value > MAX_DURATION_S:
        raise ReaperError(f"{option}: duration {text!r} is too long (at most 10 years)")
    return value


def parse_signal(text, option="--stop-signal"):
    import _signal
    name = text.upper()
    if name.isdigit():
        number = int(name)
    else:
        if not name.startswith("SIG"):
            name = "SIG" + name
        number = getattr(_signal, name, None) if "_" not in name else None
    if not isinstance(number, int) or number not in _signal.valid_signals():
        raise ReaperError(f"{option}: unknown signal {text!r}")
    return number


def check_name(name):
    if not name or len(name) > 200 or name in (".", "..") or "/" in name or \
            any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ReaperError(f"--name: invalid job name {name!r} (no '/', no control characters)")
    return name


def default_name(cmd):
    base = os.path.basename(cmd) or "job"
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in base)[:64].lstrip(".") or "job"


def parse_exec(args):
    opts = {"verbose": False, "wait_all": False, "pidns": False, "notify_ready": False, "name": None,
            "containment": "auto", "cgroup_parent": None, "timeout": None,
            "grace": PID1_GRACE if os.getpid() == 1 else DEFAULT_GRACE, "stop_signal": "TERM",
            "stats": False, "stats_json": None, "memory_max": None, "pids_max": None, "cpu_max": None}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        key, eq, value = arg.partition("=")
        if arg in HELP:
            raise Help(EXEC_USAGE)
        if key in EXEC_FLAGS and not eq:
            opts[EXEC_FLAGS[key]] = True
        elif key in EXEC_VALUES:
            if not eq:
                i += 1
                if i == len(args):
                    raise ReaperError(f"{key} needs a value")
                value = args[i]
            opts[EXEC_VALUES[key]] = value
        else:
            raise ReaperError(f"unknown option {arg!r} (see reaper --help)")
        i += 1
    argv = args[i:]
    if not argv:
        raise ReaperError("no command given (usage: reaper exec [OPTIONS] -- CMD [ARG...])")
    if opts["containment"] not in ("auto", "cgroup", "pgroup"):
        raise ReaperError(f"--containment: expected auto, cgroup or pgroup, not {opts['containment']!r}")
    opts["grace"] = parse_duration(opts["grace"], "--grace")
    if opts["timeout"] is not None:
        # As with timeout(1), 0 means no limit.
        opts["timeout"] = parse_duration(opts["timeout"], "--timeout") or None
    if opts["cgroup_parent"] == "":
        raise ReaperError("--cgroup-parent: empty path")
    opts["stop_signal"] = parse_signal(opts["stop_signal"])
    opts["name_explicit"] = opts["name"] is not None
    opts["name"] = check_name(opts["name"]) if opts["name"] is not None else default_name(argv[0])
    opts["limits"] = None
    if opts["memory_max"] is not None or opts["pids_max"] is not None or opts["cpu_max"] is not None:
        from reaper import limits
        opts["limits"] = limits.parse(opts["memory_max"], opts["pids_max"], opts["cpu_max"])
    return opts, argv


class Help(Exception):
    """--help was asked for: print this text on stdout and exit 0."""


def say(msg, fd=2):
    """Write one line; a closed or broken stderr must never stop reaper from collecting."""
    try:
        os.write(fd, msg.encode(errors="replace"))
    except OSError:
        pass


def make_log(verbose):
    if not verbose:
        return None
    return lambda msg: say(f"reaper: {msg}\n")


def cmd_exec(args, control=None):
    global _collected
    opts, argv = parse_exec(args)
    log = make_log(opts["verbose"])
    from reaper import containment
    from reaper.supervisor import Supervisor
    from reaper.jobhooks import ExecHooks
    hooks = ExecHooks(opts["name"], opts["name_explicit"], argv, stats_summary=opts["stats"],
                      stats_json=opts["stats_json"], log=log)
    try:
        sup, code = _exec_registered(opts, argv, log, hooks, containment, Supervisor, control)
    finally:
        hooks.close()
    hooks.report(code)
    _collected = True
    if control is not None:
        return code     # a Python caller's supervisor: it still reports the end to the caller
    return exit_like_the_job(sup, code)


def _exec_registered(opts, argv, log, hooks, containment, Supervisor, control):
    holder = containment.choose(opts["containment"], hooks.name, opts["cgroup_parent"],
                                own_init=opts["pidns"], limits=opts["limits"], log=log)
    try:
        hooks.prepare(holder, opts["grace"])
    except BaseException:
        holder.close()
        raise
    if log:
        log(f"containment: {holder.name}: {holder.reason}")
        if getattr(holder, "placement", None):
            log(f"job cgroups: {holder.placement}")
        if not opts["pidns"] and os.getpid() != 1:
            log("note: the job can see reaper's pid, so it can stop or signal reaper; "
                "--pidns hides it")
    before_exec = None
    if opts["pidns"]:
        from reaper import pidns
        before_exec = pidns.prepare(argv, log, opts["grace"], opts["stop_signal"], opts["wait_all"])
    relay = None
    if "NOTIFY_SOCKET" in os.environ or opts["notify_ready"]:
        from reaper.notify import Relay
        relay = Relay.setup(log or (lambda msg: None), opts["notify_ready"])
    sup = Supervisor(argv, holder, grace_s=opts["grace"], timeout_s=opts["timeout"],
                     stop_signal=opts["stop_signal"], wait_all=opts["wait_all"], log=log,
                     before_exec=before_exec,
                     watchers=[w for w in (hooks, control, relay) if w is not None])
    try:
        return sup, sup.run()
    finally:
        if relay:
            relay.close()


def exit_like_the_job(sup, code):
    """Die of the signal reaper forwarded when that signal is what ended the job.

    `systemctl stop` sends TERM to reaper (KillMode=mixed), reaper forwards it
    and the job dies of it.  systemd counts only death by SIGHUP, SIGINT,
    SIGTERM or SIGPIPE (or exit 0) as a clean stop, so exiting with the code
    143 would leave the unit failed.  Dying of the same signal is also what a
    shell expects of a program interrupted by Ctrl-C (it then stops a loop),
    and what GNU timeout does.  A job that dies of a signal reaper did not
    forward, or that needed SIGKILL, still gives 128+N.  PID 1 of a pid
    namespace cannot die of its own signal: it keeps 128+N.
    """
    status, sig = sup.main_status, sup.stop_requested
    if (sig is None or status is None or sup.timed_out or os.getpid() == 1
            or not os.WIFSIGNALED(status) or os.WTERMSIG(status) != sig):
        return code
    import resource
    import signal
    sys.stdout.flush()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))     # QUIT would dump reaper's core
    signal.set_wakeup_fd(-1)
    signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
    os.kill(os.getpid(), sig)
    return code


def cmd_doctor(args):
    from reaper import doctor
    if any(a in HELP for a in args):
        raise Help(DOCTOR_USAGE)
    if args not in ([], ["--json"]):
        raise ReaperError(f"doctor: unknown arguments {' '.join(args)!r}")
    return doctor.main(as_json=bool(args))


def cmd_gc(args):
    from reaper import containment, cgroup
    verbose, parent = False, None
    i = 0
    while i < len(args):
        key, eq, value = args[i].partition("=")
        if args[i] in HELP:
            raise Help(GC_USAGE)
        if key in ("-v", "--verbose") and not eq:
            verbose = True
        elif key == "--cgroup-parent":
            if not eq:
                i += 1
                if i == len(args):
                    raise ReaperError("--cgroup-parent needs a value")
                value = args[i]
            parent = value
        else:
            raise ReaperError(f"gc: unknown option {args[i]!r}")
        i += 1
    from reaper import commands_jobs
    removed, entries = commands_jobs.gc_registry()
    if verbose:
        for entry in entries:
            say(f"reaper: gc: removed stale {entry}\n")
    place = containment.probe(parent)
    where = place.parent
    if where is None or place.problem:
        if parent is not None:
            raise ReaperError(f"gc: {place.problem or place.why}")
        if verbose:
            say(f"reaper: gc: not looking for job cgroups: {place.problem or place.why}\n")
        where = None
    removed += cgroup.collect_stale(where) if where else []
    for path in removed:
        say(f"removed {path}\n", 1)
    if verbose:
        say(f"reaper: gc: {len(removed)} stale job cgroup(s) under {where}\n")
    return 0


_collected = False      # set once `exec` has collected its job and removed its cgroup


def cmd_jobs(command):
    def run(args):
        from reaper import commands_jobs
        if any(a in HELP for a in args):
            raise Help(commands_jobs.USAGE[command])
        return commands_jobs.COMMANDS[command](args)
    return run


COMMANDS = {"exec": cmd_exec, "doctor": cmd_doctor, "gc": cmd_gc,
            **{c: cmd_jobs(c) for c in ("ls", "ps", "ports", "stats", "kill")}}


def report(error):
    """Print a ReaperError as one `reaper:` line; return its exit code."""
    say(f"reaper: {error}\n")
    return error.code


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if os.getpid() == 1:
        from reaper import early
        early.catch()
    try:
        if not args:
            raise ReaperError("no command given (reaper exec|doctor|gc; see reaper --help)")
        if args[0] in HELP or args[0] == "help":
            raise Help(USAGE)
        if args[0] == "--version":
            from reaper import __version__
            raise Help(f"reaper {__version__}\n")
        command = COMMANDS.get(args[0])
        if command is None:
            raise ReaperError(f"unknown command {args[0]!r} (expected exec, doctor or gc)")
        return command(args[1:])
    except Help as h:
        say(str(h), 1)
        return 0
    except ReaperError as e:
        return report(e)
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        say(f"reaper: {e.strerror or e}{where}\n")
        return EXIT_FAILURE
    except Exception as e:
        say(f"reaper: internal error: {e!r}\n")
        return EXIT_FAILURE


def run():
    """The program: main(), then exit with its status (the launcher and -m call this).

    After `exec` has collected its job there is nothing left for the
    interpreter's finalisation to do but free memory the kernel frees anyway
    (2-4 ms measured), so once stdout and stderr are flushed reaper leaves with
    os._exit.  Any other path (other commands, errors) exits normally.
    """
    code = main()
    if _collected:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)
