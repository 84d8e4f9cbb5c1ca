"""Looking into a running job from outside: its processes (as a tree) and its sockets.

Processes:
- cgroup containment: the pids in the job's cgroup (and any sub-cgroup), after
  checking that the directory is still the one the entry recorded (its inode).
  Nothing can leave a cgroup by forking, so this is the whole job.
- pgroup containment: the descendants of the pinned supervisor (a subreaper:
  orphans of the job re-parent to it), from one pass over /proc/*/stat.
Each process is marked `main`, `escaped_session` / `escaped_group` (its
session or process group is no longer the job's: setsid, setpgid, a double
fork), and `orphan` (its parent died and it was re-parented to reaper).
/proc is read directly; psutil's import alone (~25 ms) would take a quarter of
`reaper ls`'s budget for 100 jobs.

Sockets (`reaper ports`): inet sockets come from the kernel's sock_diag
(NETLINK_SOCK_DIAG through pyroute2's DiagSocket, imported here only).  Since
Linux 5.8 every inet_diag message carries INET_DIAG_CGROUP_ID, the cgroup v2 id
(= the cgroup directory's inode) of the socket's creator, so a job cgroup's
sockets are found even when the process that made them passed them on.  The
owning processes come from a /proc/PID/fd scan (`socket:[INODE]` links), which
is also the whole mechanism without a cgroup, without pyroute2, or with
REAPER_NO_SOCK_DIAG=1; the inet details then come from /proc/net/{tcp,udp}{,6}.
Unix sockets always come from the fd scan and /proc/net/unix.
"""

import os

from reaper.procfs import read

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

TCP_STATES = {1: "ESTABLISHED", 2: "SYN-SENT", 3: "SYN-RECV", 4: "FIN-WAIT-1", 5: "FIN-WAIT-2",
              6: "TIME-WAIT", 7: "CLOSE", 8: "CLOSE-WAIT", 9: "LAST-ACK", 10: "LISTEN",
              11: "CLOSING", 12: "NEW-SYN-RECV"}


# -- processes ----------------------------------------------------------------

def read_process(pid, argv=True):
    """A dict describing pid from /proc, or None if it is gone."""
    try:
        data = read(f"/proc/{pid}/stat")
        cmdline = read(f"/proc/{pid}/cmdline") if argv else b""
    except OSError:
        return None
    comm = data[data.index(b"(") + 1:data.rindex(b")")].decode(errors="replace")
    fields = data[data.rindex(b")") + 2:].split()
    argv = [a.decode(errors="replace") for a in cmdline.split(b"\0")[:-1]] or [f"[{comm}]"]
    return {"pid": pid, "ppid": int(fields[1]), "pgid": int(fields[2]), "sid": int(fields[3]),
            "state": fields[0].decode(), "starttime": int(fields[19]),
            "cpu_user_s": int(fields[11]) / TICKS, "cpu_system_s": int(fields[12]) / TICKS,
            "rss_bytes": int(fields[21]) * PAGE, "comm": comm, "argv": argv}


def cgroup_pids(path):
    """The pids in the cgroup at `path` and in every cgroup below it."""
    try:
        pids = [int(x) for x in read(path + "/cgroup.procs").split()]
    except OSError:
        pids = []
    try:
        with os.scandir(path) as entries:
            subdirs = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return pids
    for sub in subdirs:
        pids += cgroup_pids(sub)
    return pids


def cgroup_matches(job):
    """Is the entry's cgroup path still the directory it recorded?  (Asked once per job object.)"""
    known = getattr(job, "cgroup_ok", None)
    if known is None:
        try:
            known = os.stat(job.cgroup).st_ino == job.entry.get("cgroup_ino")
        except (OSError, TypeError):
            known = False
        try:
            job.cgroup_ok = known
        except AttributeError:
            pass
    return known


def children_map():
    """{ppid: [pid, ...]} of every process, from one pass over /proc/*/stat."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            data = read(f"/proc/{entry}/stat")
            ppid = int(data[data.rindex(b")") + 2:].split(None, 2)[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendant_pids(root_pid, children=None):
    """Descendants of root_pid; pass one children_map() to look at many roots."""
    children = children_map() if children is None else children
    found, todo = [], [root_pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def job_pids(job, children=None):
    if job.cgroup and cgroup_matches(job):
        return cgroup_pids(job.cgroup)
    return descendant_pids(job.pid, children)


def processes(job, argv=True, children=None):
    """Every process of a live job, marked; sorted by pid.

    argv=False skips the command lines; children: a children_map() shared by
    several calls (`reaper ls`), for jobs without a cgroup.
    """
    e = job.entry
    main_pid, main_start = e.get("main_pid"), e.get("main_starttime")
    sid, pgid = e.get("sid"), e.get("pgid")
    out = []
    for pid in sorted(set(job_pids(job, children))):
        if pid == job.pid:
            continue
        p = read_process(pid, argv)
        if p is None:
            continue
        p["main"] = pid == main_pid and p["starttime"] == main_start
        p["escaped_session"] = sid is not None and p["sid"] != sid
        p["escaped_group"] = pgid is not None and p["pgid"] != pgid
        p["orphan"] = p["ppid"] == job.pid and not p["main"]
        out.append(p)
    return out


def marks(p):
    m = []
    if p["main"]:
        m.append("main")
    if p["escaped_session"]:
        m.append("left-session")
    elif p["escaped_group"]:
        m.append("left-group")
    if p["orphan"]:
        m.append("orphan")
    return m


def tree_lines(procs):
    """[(depth, process)] in tree order: roots are processes whose parent is not in the job."""
    by_pid = {p["pid"]: p for p in procs}
    children = {}
    roots = []
    for p in procs:
        if p["ppid"] in by_pid and p["ppid"] != p["pid"]:
            children.setdefault(p["ppid"], []).append(p)
        else:
            roots.append(p)
    roots.sort(key=lambda p: (not p["main"], p["pid"]))
    lines = []

    def walk(p, depth):
        lines.append((depth, p))
        for c in sorted(children.get(p["pid"], ()), key=lambda c: c["pid"]):
            walk(c, depth + 1)
    for r in roots:
        walk(r, 0)
    return lines


# -- sockets ------------------------------------------------------------------

def socket_inodes(pids):
    """{socket inode: sorted list of pids holding it} from /proc/PID/fd."""
    owners = {}
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owners.setdefault(int(target[8:-1]), set()).add(pid)
    return {ino: sorted(p) for ino, p in owners.items()}


def _fmt(addr, port, family):
    return f"[{addr}]:{port}" if family == 6 else f"{addr}:{port}"


def diag_sockets():
    """Every TCP and UDP socket of this network namespace via sock_diag: list of dicts."""
    from socket import AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP
    from pyroute2 import DiagSocket
    found = []
    with DiagSocket() as ds:
        ds.bind()
        for family in (AF_INET, AF_INET6):
            for proto, pname in ((IPPROTO_TCP, "tcp"), (IPPROTO_UDP, "udp")):
                for m in ds.get_sock_stats(family=family, protocol=proto):
                    fam = 6 if family == AF_INET6 else 4
                    state = m["idiag_state"]
                    found.append({
                        "proto": pname + ("6" if fam == 6 else ""), "inode": m["idiag_inode"],
                        "state": (TCP_STATES.get(state, str(state)) if pname == "tcp"
                                  else ("UNCONN" if state == 7 else "ESTAB")),
                        "local": _fmt(m["idiag_src"], m["idiag_sport"], fam),
                        "remote": _fmt(m["idiag_dst"], m["idiag_dport"], fam),
                        "cgroup_id": m.get_attr("INET_DIAG_CGROUP_ID")})
    return found


def _hex_addr(text, fam):
    import socket
    addr, port = text.split(":")
    raw = bytes.fromhex(addr)
    if fam == 4:
        ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:
        ip = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    return _fmt(ip, int(port, 16), fam)


def proc_net_sockets():
    """The same as diag_sockets() from /proc/net (no cgroup ids)."""
    found = []
    for pname in ("tcp", "tcp6", "udp", "udp6"):
        fam = 6 if pname.endswith("6") else 4
        try:
            with open(f"/proc/net/{pname}") as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            state = int(fields[3], 16)
            found.append({"proto": pname, "inode": int(fields[9]),
                          "state": (TCP_STATES.get(state, str(state)) if pname.startswith("tcp")
                                    else ("UNCONN" if state == 7 else "ESTAB")),
                          "local": _hex_addr(fields[1], fam), "remote": _hex_addr(fields[2], fam),
                          "cgroup_id": None})
    return found


def unix_sockets():
    found = {}
    try:
        with open("/proc/net/unix") as f:
            lines = f.readlines()[1:]
    except OSError:
        return found
    types = {1: "stream", 2: "dgram", 5: "seqpacket"}
    for line in lines:
        fields = line.split()
        if len(fields) < 7:
            continue
        inode = int(fields[6])
        flags = int(fields[3], 16)
        found[inode] = {"proto": "unix", "inode": inode,
                        "state": "LISTEN" if flags & 0x10000 else
                                 {1: "UNCONN", 3: "ESTAB"}.get(int(fields[5], 16), fields[5]),
                        "type": types.get(int(fields[4], 16), fields[4]),
                        "local": fields[7] if len(fields) > 7 else "", "remote": ""}
    return found


def ports(job, procs):
    """The job's sockets: list of dicts (proto, state, local, remote, inode, pids, source)."""
    pids = [p["pid"] for p in procs]
    owners = socket_inodes(pids)
    cg_id = job.entry.get("cgroup_ino") if job.cgroup and cgroup_matches(job) else None
    inet, source = None, "/proc/PID/fd + /proc/net"
    if not os.environ.get("REAPER_NO_SOCK_DIAG"):
        try:
            inet = diag_sockets()
            source = "sock_diag" + (" (INET_DIAG_CGROUP_ID)" if cg_id else "") + " + /proc/PID/fd"
        except (ImportError, OSError):
            inet = None
    if inet is None:
        inet = proc_net_sockets()
    result = []
    for s in inet:
        in_cgroup = cg_id is not None and s["cgroup_id"] == cg_id
        if s["inode"] in owners or (in_cgroup and s["inode"] != 0):
            s = dict(s, pids=owners.get(s["inode"], []))
            s.pop("cgroup_id", None)
            result.append(s)
    unix = unix_sockets()
    for ino, holders in owners.items():
        if ino in unix:
            result.append(dict(unix[ino], pids=holders))
    result.sort(key=lambda s: (s["proto"], s["state"] != "LISTEN", s["local"]))
    return result, source
