"""`reaper doctor`: what this machine offers reaper, for this process and user.

This module owns the report and nothing else.  It decides nothing on its own:
the cgroup facts come from reaper.cgroup, and the containment `auto` would pick
comes from reaper.containment.probe(), the function `reaper exec` itself calls,
so the report cannot drift from what exec does.  It only adds what exec never
needs to know in advance: kernel features (cgroup.kill, cgroup.freeze,
subreaper, pidfd, user and pid namespaces) and how each was established.

Every probe is read-only or happens in a throw-away child: doctor never creates
a cgroup, never changes its own state, and reaps every child it forks before it
returns.  Where a fact can only be assumed (the root cgroup has no cgroup.kill,
so with no other cgroup to look at, the kernel version decides), the report
says so.  Output is `key: value` lines for people, or one JSON object with
stable snake_case keys for machines (--json).  The exit status is always 0.
"""

import os
import select
import signal
import sys

from reaper import cgroup, containment
from reaper.errors import ReaperError

CAP_SYS_ADMIN = 21
KILL_SINCE = (5, 14)        # cgroup.kill (Documentation/admin-guide/cgroup-v2.rst)
FREEZE_SINCE = (5, 2)       # cgroup.freeze
PROBE_WAIT_S = 2.0          # an unshare() probe takes a few ms; never wait longer than this


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _read_int(path):
    text = _read(path)
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


def _kernel():
    """(release string, (major, minor)) of the running kernel."""
    release = os.uname().release
    numbers = []
    for part in release.split(".")[:2]:
        digits = ""
        for c in part:
            if not c.isdigit():
                break
            digits += c
        numbers.append(int(digits or 0))
    return release, tuple(numbers + [0] * (2 - len(numbers)))


def _cap_sys_admin():
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    return False


def _is_root_cgroup(path):
    # cgroup.events exists in every cgroup but the hierarchy's real root (the
    # root of a cgroup namespace is an ordinary cgroup and has it).
    return not os.path.exists(os.path.join(path, "cgroup.events"))


def _some_child_cgroup(parent):
    """One non-root cgroup directly below `parent`, or None (looks no deeper)."""
    try:
        with os.scandir(parent) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    return entry.path
    except OSError:
        pass
    return None


def _core_file(mount, parent, name, since, kernel):
    """Would a job cgroup under `parent` have `name`?  -> (bool or None, where, how we know)."""
    if not mount:
        return None, None, "no cgroup2 hierarchy"
    base = parent or mount      # no usable parent: still say what the kernel offers
    if not _is_root_cgroup(base):
        path = os.path.join(base, name)
        found = os.path.exists(path)
        return found, "parent" if parent else "cgroup2 mount", f"{path} {'exists' if found else 'is missing'}"
    # The root cgroup never has it; job cgroups are its children.
    child = _some_child_cgroup(base)
    if child is not None:
        found = os.path.exists(os.path.join(child, name))
        return found, "child cgroups", f"{'seen' if found else 'not present'} in {child}"
    ok = kernel[1] >= since
    sign = ">=" if ok else "<"
    return ok, "child cgroups", (f"assumed: kernel {kernel[1][0]}.{kernel[1][1]} {sign} "
                                 f"{since[0]}.{since[1]}, no non-root cgroup to look at")


def _controllers(parent):
    text = _read(os.path.join(parent, "cgroup.controllers")) if parent else None
    return text.split() if text else []


def _subreaper():
    try:
        import _prctl
        current = _prctl.prctl(_prctl.PR_GET_CHILD_SUBREAPER)
    except ImportError:
        return False, "python-prctl (_prctl) is not importable"
    except OSError as e:
        return False, f"PR_GET_CHILD_SUBREAPER failed: {e.strerror} (Linux >= 3.4 needed)"
    return True, f"PR_GET_CHILD_SUBREAPER works; {'already' if current else 'not yet'} a subreaper"


def _pidfd():
    if not hasattr(os, "pidfd_open"):
        return False, "this Python has no os.pidfd_open"
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError as e:
        return False, f"pidfd_open(own pid) failed: {e.strerror} (Linux >= 5.3 needed)"
    return True, "pidfd_open(own pid) works"


def _in_child(steps):
    """Run (label, fn) steps in a forked child that then exits; None on success, else why not.

    The child only calls unshare() and writes its own id maps, so the probe
    changes nothing in this process.  It is bounded by PROBE_WAIT_S, and always
    reaped.
    """
    rfd, wfd = os.pipe()
    try:
        pid = os.fork()
    except OSError as e:
        os.close(rfd)
        os.close(wfd)
        return f"fork: {e.strerror}"
    if pid == 0:
        code = 1
        try:
            os.close(rfd)
            for label, fn in steps:
                try:
                    fn()
                except OSError as e:
                    os.write(wfd, f"{label}: {e.strerror or e}".encode())
                    break
            else:
                code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    message = b""
    try:
        while select.select([rfd], [], [], PROBE_WAIT_S)[0]:
            chunk = os.read(rfd, 512)
            if not chunk:
                break
            message += chunk
        else:
            os.kill(pid, signal.SIGKILL)     # our own child, by pid
            message = b"probe timed out"
    finally:
        os.close(rfd)
        _, status = os.waitpid(pid, 0)
    if message:
        return message.decode(errors="replace")
    return None if os.waitstatus_to_exitcode(status) == 0 else "probe failed"


def _fork_init():
    """Start the first process of the new pid namespace (its init) and reap it."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def _namespaces(euid):
    from reaper import pidns
    limit = _read_int("/proc/sys/user/max_user_namespaces")
    clone = _read_int("/proc/sys/kernel/unprivileged_userns_clone")      # Debian/Ubuntu kernels
    apparmor = _read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    ids = (euid, os.getegid())

    user_steps = [("unshare(CLONE_NEWUSER)", lambda: pidns._unshare(pidns.CLONE_NEWUSER))]
    if euid != 0:
        user_steps.append(("uid_map", lambda: pidns._map_own_ids(*ids)))
    if euid == 0:       # exactly what `reaper exec --pidns` does (reaper.pidns.prepare)
        pid_steps = [("unshare(CLONE_NEWPID)", lambda: pidns._unshare(pidns.CLONE_NEWPID))]
    else:
        pid_steps = [("unshare(CLONE_NEWUSER|CLONE_NEWPID)",
                      lambda: pidns._unshare(pidns.CLONE_NEWUSER | pidns.CLONE_NEWPID)),
                     ("uid_map", lambda: pidns._map_own_ids(*ids))]
    pid_steps.append(("fork of the namespace's init", _fork_init))

    user_error = _in_child(user_steps)
    pid_error = _in_child(pid_steps)

    facts = [f"max_user_namespaces {limit if limit is not None else 'unknown'}"]
    if clone is not None:
        facts.append(f"unprivileged_userns_clone {clone}")
    if apparmor is not None:
        facts.append(f"apparmor_restrict_unprivileged_userns {apparmor}")
    facts.append(f"probe {user_steps[0][0]}: {user_error or 'ok'}")
    how = " + ".join(label for label, _ in pid_steps[:-1])
    return {
        "max_user_namespaces": limit,
        "unprivileged_userns_clone": clone,
        "user_namespaces": user_error is None,
        "user_namespaces_detail": "; ".join(facts),
        "pid_namespaces": pid_error is None,
        "pid_namespaces_detail": (f"--pidns works: {how} as uid {euid}" if pid_error is None
                                  else f"--pidns fails: {pid_error}"),
    }


def collect():
    """Everything doctor knows, as a flat dict with stable snake_case keys."""
    euid = os.geteuid()
    release, kernel = _kernel()
    try:
        import pwd
        user = pwd.getpwuid(euid).pw_name
    except (ImportError, KeyError):
        user = str(euid)
    info = {
        "user": user,
        "uid": os.getuid(),
        "euid": euid,
        "root": euid == 0,
        "cap_sys_admin": _cap_sys_admin(),
        "pid": os.getpid(),
        "pid1": os.getpid() == 1,
        "kernel": release,
    }

    try:
        h, parent, problem = containment.probe()
    except ReaperError as e:        # e.g. /proc/self/mountinfo unreadable
        h, parent, problem = None, None, str(e)
    mount = h.mount if h else None
    read_only = bool(h and h.read_only)
    kill = _core_file(mount, parent, "cgroup.kill", KILL_SINCE, (release, kernel))
    freeze = _core_file(mount, parent, "cgroup.freeze", FREEZE_SINCE, (release, kernel))
    # reaper.cgroup.has_kill() honours the same switch when it opens a job cgroup
    kill_disabled = bool(os.environ.get("REAPER_NO_CGROUP_KILL"))
    info.update({
        "cgroup2_mount": mount,
        "cgroup_layout": h.layout if h else "unknown",
        "cgroup2_read_only": read_only,
        "own_cgroup": h.own if h else None,
        "cgroup_parent": parent,
        "cgroup_parent_is_root": parent is not None and _is_root_cgroup(parent),
        "cgroup_parent_writable": cgroup.writable(parent) and not read_only,
        "cgroup_kill": kill[0],
        "cgroup_kill_where": kill[1],
        "cgroup_kill_detail": kill[2],
        "cgroup_kill_disabled": kill_disabled,
        "cgroup_freeze": freeze[0],
        "cgroup_freeze_where": freeze[1],
        "cgroup_freeze_detail": freeze[2],
        "cgroup_controllers": _controllers(parent),
    })

    from reaper import tree
    info["proc_usable"] = tree.proc_usable()
    # Without --pidns the job shares reaper's pid namespace: it can SIGSTOP or
    # SIGKILL its supervisor (same user), which no containment prevents.
    info["job_sees_reaper"] = not info["pid1"]
    info["subreaper"], info["subreaper_detail"] = _subreaper()
    info["pidfd"], info["pidfd_detail"] = _pidfd()
    info.update(_namespaces(euid))

    if problem is None:
        if kill[0] and not kill_disabled:
            stop = "cgroup.kill"
        elif freeze[0] is False:
            stop = "signal each pid in cgroup.procs until empty (no cgroup.freeze)"
        else:
            stop = "freeze, signal, thaw"
        info.update({"auto_containment": "cgroup", "auto_problem": None, "stop_method": stop,
                     "auto_reason": f"{parent} is writable; stop by {stop}"})
    elif not info["proc_usable"] and not info["pid1"]:
        info.update({"auto_containment": "none", "auto_problem": problem, "stop_method": None,
                     "auto_reason": f"exec refuses without --pidns: {problem}, and /proc does not show "
                                    f"this pid namespace"})
    else:
        info.update({"auto_containment": "pgroup", "auto_problem": problem,
                     "stop_method": "kill(-1)" if info["pid1"] else "pinned process tree sweep",
                     "auto_reason": f"subreaper + process group, because {problem}"})
    return info


LAYOUTS = {"unified": " (pure cgroup v2)", "hybrid": " (cgroup v1 hierarchies mounted too)",
           "none": " (no cgroup2 mounted)"}


def _yes(value):
    return {True: "yes", False: "no", None: "unknown"}[value]


def _feature(value, where, detail):
    if value and where == "child cgroups":
        return f"available in child cgroups ({detail})"
    return f"{_yes(value)} ({detail})"


def render(info):
    """The human form: aligned `key: value` lines, the verdict last."""
    who = f"{info['user']} (uid {info['euid']}{', CAP_SYS_ADMIN' if info['cap_sys_admin'] else ''})"
    kill = _feature(info["cgroup_kill"], info["cgroup_kill_where"], info["cgroup_kill_detail"])
    if info["cgroup_kill_disabled"]:
        kill += "; not used: REAPER_NO_CGROUP_KILL is set"
    parent = info["cgroup_parent"] or "none"
    if info["cgroup_parent_is_root"]:
        parent += " (the root cgroup)"
    rows = [
        ("kernel", info["kernel"]),
        ("user", who),
        ("pid 1", f"{_yes(info['pid1'])} (pid {info['pid']})"),
        ("cgroup2 mount", info["cgroup2_mount"] or "none"),
        ("cgroup layout", info["cgroup_layout"] + LAYOUTS.get(info["cgroup_layout"], "")),
        ("cgroup2 read-only", _yes(info["cgroup2_read_only"])),
        ("own cgroup", info["own_cgroup"] or "unknown"),
        ("job cgroup parent", parent),
        ("parent writable", _yes(info["cgroup_parent_writable"])),
        ("cgroup.kill", kill),
        ("cgroup.freeze", _feature(info["cgroup_freeze"], info["cgroup_freeze_where"],
                                   info["cgroup_freeze_detail"])),
        ("controllers", " ".join(info["cgroup_controllers"]) or "none"),
        ("subreaper", f"{_yes(info['subreaper'])} ({info['subreaper_detail']})"),
        ("pidfd", f"{_yes(info['pidfd'])} ({info['pidfd_detail']})"),
        ("user namespaces", f"{_yes(info['user_namespaces'])} ({info['user_namespaces_detail']})"),
        ("pid namespaces", f"{_yes(info['pid_namespaces'])} ({info['pid_namespaces_detail']})"),
        ("/proc", "shows this pid namespace" if info["proc_usable"]
         else "does not show this pid namespace (the process-tree fallback cannot be used)"),
        ("job sees reaper", "yes: a job can stop or kill its supervisor; --pidns hides reaper from it"
         if info["job_sees_reaper"] else "no: reaper is PID 1"),
        ("auto containment", f"{info['auto_containment']} ({info['auto_reason']})"),
    ]
    width = max(len(key) for key, _ in rows) + 1
    return "".join(f"{key + ':':<{width}} {value}\n" for key, value in rows)


def main(as_json=False):
    info = collect()
    if as_json:
        import json
        text = json.dumps(info, indent=2) + "\n"
    else:
        text = render(info)
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0
