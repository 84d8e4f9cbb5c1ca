"""Commands that act on registered jobs from any shell: ls, ps, ports, stats, kill (and gc's registry walk).

Each command finds jobs through reaper.registry, which pins a live job's
supervisor with a pidfd before anything else happens; stale entries are shown
(`ls` marks them) but never acted upon.  An unprivileged user sees only the
registry of their own uid; root sees every user's.

`reaper kill NAME` does not signal the job itself: it asks the job's supervisor
(reaper.control) to run the job's own stop ladder (the stop signal to the
whole job, SIGKILL after the grace period), then waits on the supervisor's
pidfd, because a supervisor exits only once nothing of its job is left.  If
the supervisor cannot be reached through its socket, it gets SIGTERM through
the pidfd (its ladder, its own grace).  If it has not exited by grace + 10 s,
a second request asks for SIGKILL at once; if even that does not finish within
10 s, kill reports EXIT_NOT_STOPPED.  If the supervisor died on its own while
we waited (SIGKILL, OOM), what is left of a cgroup job is collected here, as
`reaper gc` would.  No pid is ever signalled by number.

Exit codes: 0 done; 3 no such job; 4 not permitted; 5 not stopped; 125 usage.
"""

import os
import select
import time

import _signal

from reaper import registry
from reaper.errors import EXIT_NOT_PERMITTED, EXIT_NOT_STOPPED, ReaperError

KILL_MARGIN_S = 10.0


def parse(command, args, flags=(), values=(), positional=0):
    opts, rest = {}, []
    i = 0
    while i < len(args):
        arg = args[i]
        key, eq, value = arg.partition("=")
        if key in flags and not eq:
            opts[key] = True
        elif key in values:
            if not eq:
                i += 1
                if i == len(args):
                    raise ReaperError(f"{command}: {key} needs a value")
                value = args[i]
            opts[key] = value
        elif arg.startswith("-") and arg != "-":
            raise ReaperError(f"{command}: unknown option {arg!r} (see reaper --help)")
        else:
            rest.append(arg)
        i += 1
    if len(rest) != positional:
        want = "a job NAME" if positional else "no arguments"
        raise ReaperError(f"{command}: expected {want}, got {' '.join(rest) or 'none'}")
    return opts, rest


def _print_json(doc):
    print(registry.dumps(doc))


def _age(seconds):
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _size(n):
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024


def _table(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


_USERS = {}


def _user(uid):
    if uid not in _USERS:
        try:
            import pwd
            _USERS[uid] = pwd.getpwuid(uid).pw_name
        except (KeyError, ImportError):
            _USERS[uid] = str(uid)
    return _USERS[uid]


# -- ls ---------------------------------------------------------------------------

def summarize(job, children=None):
    """One job's line for `reaper ls`, as a dict."""
    from reaper import stats
    e = job.entry
    doc = {"name": job.name, "user": _user(job.owner), "uid": job.owner, "supervisor_pid": job.pid,
           "main_pid": e.get("main_pid"), "containment": e.get("containment"),
           "cgroup": e.get("cgroup"), "argv": e.get("argv"), "registry": job.dir_path,
           "alive": job.alive}
    if not job.alive:
        doc["stale"] = job.stale_reason
        return doc
    from reaper import inspect
    procs = inspect.processes(job, argv=False, children=children)
    live = stats.live(job, procs, brief=True)
    doc.update(processes=len(procs),
               escaped=sum(1 for p in procs if p["escaped_session"] or p["escaped_group"]),
               age_s=live["age_s"], cpu_s=round(live["cpu_user_s"] + live["cpu_system_s"], 3),
               memory_bytes=live["memory_bytes"])
    return doc


def cmd_ls(args):
    from reaper import inspect
    opts, _ = parse("ls", args, flags=("--json", "-a", "--all"))
    problems = []
    jobs = registry.scan(include_stale=bool(opts.get("-a") or opts.get("--all")), problems=problems)
    try:
        children = None
        if any(j.alive and not (j.cgroup and inspect.cgroup_matches(j)) for j in jobs):
            children = inspect.children_map()       # one /proc pass for every tree-contained job
        docs = [summarize(j, children) for j in jobs]
    finally:
        for j in jobs:
            j.close()
    for p in problems:
        os.write(2, f"reaper: ls: {p}\n".encode(errors="replace"))
    if opts.get("--json"):
        _print_json(docs)
        return 0
    root = os.geteuid() == 0
    rows = [(["USER"] if root else []) + ["NAME", "SUPERVISOR", "MAIN", "PROCS", "ESCAPED", "AGE",
                                          "CONTAINMENT", "CPU", "MEMORY", "COMMAND"]]
    for d in docs:
        cmd = " ".join(d["argv"] or [])[:60]
        if d["alive"]:
            row = [d["name"], d["supervisor_pid"], d["main_pid"] or "-", d["processes"], d["escaped"],
                   _age(d["age_s"]), d["containment"], f"{d['cpu_s']:.2f}s", _size(d["memory_bytes"]), cmd]
        else:
            row = [d["name"], d["supervisor_pid"], "-", "-", "-", "-", "stale", "-", "-",
                   f"({d['stale']})"]
        rows.append(([d["user"]] if root else []) + row)
    if len(rows) > 1:
        _table(rows)
    return 0


# -- ps, ports, stats ---------------------------------------------------------------

def _with_job(command, args, body):
    opts, rest = parse(command, args, flags=("--json",), positional=1)
    job = registry.lookup(rest[0])
    try:
        return body(job, opts.get("--json", False))
    finally:
        job.close()


def cmd_ps(args):
    def body(job, as_json):
        from reaper import inspect
        procs = inspect.processes(job)
        if as_json:
            _print_json({"name": job.name, "supervisor_pid": job.pid, "containment": job.entry.get("containment"),
                         "processes": procs})
            return 0
        rows = [["PID", "PPID", "PGID", "SID", "MARKS", "COMMAND"]]
        for depth, p in inspect.tree_lines(procs):
            rows.append([p["pid"], p["ppid"], p["pgid"], p["sid"], ",".join(inspect.marks(p)) or "-",
                         "  " * depth + " ".join(p["argv"])[:100]])
        print(f"job {job.name}: supervisor {job.pid}, {len(procs)} process(es), "
              f"containment {job.entry.get('containment')}")
        _table(rows)
        return 0
    return _with_job("ps", args, body)


def cmd_ports(args):
    def body(job, as_json):
        from reaper import inspect
        socks, source = inspect.ports(job, inspect.processes(job))
        if as_json:
            _print_json({"name": job.name, "source": source, "sockets": socks})
            return 0
        if socks:
            rows = [["PROTO", "STATE", "LOCAL", "REMOTE", "PIDS"]]
            for s in socks:
                rows.append([s["proto"], s["state"], s["local"] or "-", s["remote"] or "-",
                             ",".join(map(str, s["pids"])) or "-"])
            _table(rows)
        return 0
    return _with_job("ports", args, body)


def cmd_stats(args):
    def body(job, as_json):
        from reaper import inspect, stats
        doc = stats.live(job, inspect.processes(job, argv=False))
        if as_json:
            _print_json(doc)
            return 0
        for key, value in doc.items():
            if key.endswith("_bytes"):
                value = _size(value)
            print(f"{key + ':':20}{'-' if value is None else value}")
        return 0
    return _with_job("stats", args, body)


# -- kill -------------------------------------------------------------------------

def _wait_exit(pidfd, timeout_s):
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if poller.poll(max(0.0, left) * 1000):
            return True
        if left <= 0:
            return False


def _ask_stop(job, sig, grace_s):
    """Through the control socket if reachable, else SIGTERM via the pidfd.  False if the supervisor is gone."""
    from reaper import control
    try:
        control.send_stop(job.entry.get("ctl"), sig, grace_s)
        return True
    except OSError:
        pass
    try:
        _signal.pidfd_send_signal(job.pidfd, _signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError:
        raise ReaperError(f"kill {job.name}: not permitted to signal its supervisor (pid {job.pid})",
                          EXIT_NOT_PERMITTED)
    return True


def _leftovers(job):
    """Collect what is left of a job whose supervisor is gone; return how many were there."""
    if not trusted_cgroup(job):
        return 0
    from reaper import cgroup, inspect
    n = len(inspect.cgroup_pids(job.cgroup))
    cgroup.remove_tree(job.cgroup)
    return n


def kill_job(job, sig=_signal.SIGTERM, grace_s=None):
    """Stop a pinned live job through its supervisor; return once nothing of it is left."""
    uid = os.geteuid()
    if uid != 0 and job.owner != uid:
        raise ReaperError(f"kill {job.name}: the job belongs to uid {job.owner}", EXIT_NOT_PERMITTED)
    grace = grace_s if grace_s is not None else float(job.entry.get("grace_s") or 10.0)
    _ask_stop(job, sig, grace_s)
    if not _wait_exit(job.pidfd, grace + KILL_MARGIN_S):
        from reaper import control
        try:
            control.send_stop(job.entry.get("ctl"), _signal.SIGKILL, 0)
        except OSError:
            try:
                _signal.pidfd_send_signal(job.pidfd, _signal.SIGTERM)   # a second TERM kills at once
            except ProcessLookupError:
                pass
        if not _wait_exit(job.pidfd, KILL_MARGIN_S):
            raise ReaperError(f"kill {job.name}: its supervisor (pid {job.pid}) has not finished "
                              f"{grace + 2 * KILL_MARGIN_S:g}s after the stop request", EXIT_NOT_STOPPED)
    left = _leftovers(job)
    if left:
        os.write(2, f"reaper: kill {job.name}: its supervisor died without collecting the job; "
                    f"killed {left} leftover process(es)\n".encode(errors="replace"))
    if job.cgroup and trusted_cgroup(job) and _cgroup_pids(job.cgroup):
        raise ReaperError(f"kill {job.name}: processes are still in {job.cgroup}", EXIT_NOT_STOPPED)
    return 0


def _cgroup_pids(path):
    from reaper import inspect
    return inspect.cgroup_pids(path)


def cmd_kill(args):
    from reaper.cli import parse_duration, parse_signal
    opts, rest = parse("kill", args, values=("--signal", "-s", "--grace"), positional=1)
    sig = parse_signal(opts.get("--signal", opts.get("-s", "TERM")), "--signal")
    grace = parse_duration(opts["--grace"], "--grace") if "--grace" in opts else None
    job = registry.lookup(rest[0])
    try:
        return kill_job(job, sig, grace)
    finally:
        job.close()


# -- gc ---------------------------------------------------------------------------

def trusted_cgroup(job):
    """May the entry's cgroup be killed on its behalf?  Only a reaper job cgroup of the
    entry's owner, under the cgroup2 mount, that is still the directory recorded."""
    from reaper import cgroup
    path = job.cgroup
    if not isinstance(path, str) or not os.path.isabs(path) or os.path.normpath(path) != path:
        return False
    if not os.path.basename(path).startswith(cgroup.JOB_PREFIX):
        return False
    mount = cgroup.find_mount()[0]
    if not mount or not path.startswith(mount.rstrip("/") + "/"):
        return False
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return st.st_ino == job.entry.get("cgroup_ino") and st.st_uid == job.owner


def gc_registry():
    """Collect the cgroups of registered jobs whose supervisor is dead; drop their entries.

    Returns (cgroup paths removed, registry entries removed)."""
    removed, entries = [], []
    for job in registry.scan(include_stale=True):
        if job.alive:
            job.close()
            continue
        if not job.stale_dead:
            continue        # cannot tell (another pid namespace, forged lock): leave it
        if trusted_cgroup(job):
            from reaper import cgroup
            if cgroup.remove_tree(job.cgroup):
                removed.append(job.cgroup)
        if registry.remove_stale(job):
            entries.append(f"registry entry {os.path.join(job.dir_path, job.name)}.json ({job.stale_reason})")
    return removed, entries


COMMANDS = {"ls": cmd_ls, "ps": cmd_ps, "ports": cmd_ports, "stats": cmd_stats, "kill": cmd_kill}

_WHO = "Jobs: those `reaper exec` registered for this user (root: for every user)."
USAGE = {
    "ls": f"""usage: reaper ls [--json] [--all]

List running jobs: name, supervisor and main pid, processes, escaped processes,
age, containment, CPU time, memory now.  --all also shows stale entries (their
supervisor is gone; `reaper gc` removes them).  {_WHO}
""",
    "ps": f"""usage: reaper ps NAME [--json]

The processes of job NAME as a tree.  Marks: main (the command reaper started),
left-session / left-group (setsid, setpgid, a double fork), orphan (its parent
died and it was re-parented to reaper).  {_WHO}
""",
    "ports": f"""usage: reaper ports NAME [--json]

The sockets of job NAME: TCP and UDP (sock_diag; with a job cgroup, every
socket created in it) and unix sockets, with the processes holding them.
""",
    "stats": f"""usage: reaper stats NAME [--json]

What job NAME has used so far: CPU time, memory now and at peak, processes,
OOM kills (from its cgroup where the files exist, else summed from /proc).
""",
    "kill": f"""usage: reaper kill NAME [--signal SIG] [--grace DURATION]

Stop job NAME through its supervisor: SIG (default TERM) to every process of
the job, SIGKILL after DURATION (default: the job's own --grace); return only
when nothing of the job is left.
Exit status: 0 stopped; 3 no such job; 4 not permitted; 5 still running at
the deadline (grace + 20 s); 125 bad usage.
{_WHO}
""",
}
