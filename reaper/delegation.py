"""Is reaper's cgroup its own to write?  Delegation under systemd, and the move into a leaf.

systemd is the single writer of the cgroup tree it manages: a unit's cgroup,
and everything below it, is systemd's unless the unit has Delegate=yes
(systemd.resource-control(5) "Delegate=", and systemd's "Control Group APIs
and Delegation" document).  Creating job cgroups inside a cgroup systemd has
not delegated breaks that rule: systemd may migrate or remove them.

How to tell, cheapest first:
1. No /run/systemd/system: no systemd, nothing to ask (containers, this
   project's development machine).  reaper behaves exactly as before.
2. The unit that owns reaper's cgroup is the nearest ancestor (or itself)
   whose name is a unit name (`*.service`, `*.scope`, `*.slice`, ...);
   systemd never creates cgroups with other names.
3. systemd >= 251 marks the cgroups it delegates with the xattr
   `trusted.delegate=1`, or `user.delegate=1` where it runs in a user namespace
   (measured: a systemd 252 container under nspawn -U sets only user.delegate).
   trusted.* is readable only with CAP_SYS_ADMIN.
4. Otherwise ask the unit's manager for its `Delegate` property over D-Bus
   (reaper.systemd): systemd 252's user manager sets neither xattr, and older
   managers set none.  The manager of a unit below `user@UID.service` is that
   user's manager, every other unit's is the system manager.

A delegated cgroup where reaper sits at the unit's own cgroup (the main
process of a Delegate=yes service, or the scope reaper just asked for) cannot
have controllers enabled for its children while reaper is in it (cgroup v2's
no-internal-process rule, Documentation/admin-guide/cgroup-v2.rst), so reaper
moves itself into a leaf `supervisor` (systemd's own name for this with
DelegateSubgroup=, which needs systemd >= 254) and job cgroups go beside it.
"""

import errno
import os

from reaper import cgroup

UNIT_SUFFIXES = (".service", ".scope", ".slice", ".socket", ".mount", ".swap")
XATTRS = ("trusted.delegate", "user.delegate")
LEAF = "supervisor"


class Delegation:
    """What reaper found out about its own cgroup.

    systemd: whether systemd runs at all; unit / unit_path: the unit owning
    reaper's cgroup and its path in the hierarchy; user_manager: the uid whose
    user manager owns the unit (None: the system manager); delegated: True,
    False, or None when it could not be found out; by: how it was established;
    at_root: reaper's cgroup is the unit's own (not a cgroup below it).
    """

    def __init__(self, systemd, unit=None, unit_path=None, user_manager=None,
                 delegated=None, by="", at_root=False, error=False):
        self.systemd = systemd
        self.unit = unit
        self.unit_path = unit_path
        self.user_manager = user_manager
        self.delegated = delegated
        self.by = by
        self.at_root = at_root
        self.error = error      # the manager could not be asked

    @property
    def manager(self):
        return "system manager" if self.user_manager is None else f"user manager of uid {self.user_manager}"


def owning_unit(own):
    """(unit path, unit name, uid of the user manager or None) for a cgroup path like '/a.slice/b.service/x'."""
    parts = [p for p in own.split("/") if p]
    for i in range(len(parts), 0, -1):
        if parts[i - 1].endswith(UNIT_SUFFIXES):
            user = None
            for p in parts[:i - 1]:
                if p.startswith("user@") and p.endswith(".service") and p[5:-8].isdigit():
                    user = int(p[5:-8])
            return "/" + "/".join(parts[:i]), parts[i - 1], user
    return "/", None, None


def _xattr(path):
    """The name of the delegate xattr set to 1 on `path`, or None."""
    for name in XATTRS:
        try:
            if os.getxattr(path, name) == b"1":
                return name
        except OSError:
            continue        # ENODATA, or EPERM/ENOTSUP: not readable here
    return None


BOOTED = "/run/systemd/system"     # sd_booted(3): systemd is the init system


def check(hierarchy, unit_dir_of):
    """Delegation of this process's cgroup.  `unit_dir_of(path)` maps a hierarchy path to its directory.

    Where no systemd runs this is one stat(2), and reaper.systemd (D-Bus,
    jeepney, socket) is never imported.
    """
    if not os.path.isdir(BOOTED):
        return Delegation(False, by=f"{BOOTED} does not exist")
    unit_path, unit, user = owning_unit(hierarchy.own)
    at_root = unit_path == hierarchy.own.rstrip("/") or hierarchy.own == "/"
    if unit is None:
        return Delegation(True, unit_path="/", delegated=False, at_root=at_root,
                          by="the root cgroup is the system manager's")
    d = Delegation(True, unit, unit_path, user, at_root=at_root)
    unit_dir = unit_dir_of(unit_path)
    found = _xattr(unit_dir) if unit_dir else None
    if found:
        d.delegated, d.by = True, f"{found}=1 on {unit_dir}"
        return d
    if user is not None and user != os.geteuid():
        d.by = f"{unit} belongs to the user manager of uid {user}, which only that user can ask"
        return d
    from reaper import systemd
    try:
        value = systemd.unit_property(unit, "Delegate", user=user is not None)
    except systemd.BusError as e:
        d.by = f"cannot ask the {d.manager} about {unit}: {e}"
        d.error = True
        return d
    d.delegated = bool(value)
    d.by = f"Delegate={'yes' if value else 'no'} per the {d.manager}"
    return d


def scope_name(job_name, suffix=""):
    """A valid unit name for the transient scope of job `job_name` (systemd.unit(5): [A-Za-z0-9:_.-])."""
    safe = "".join(c if c.isalnum() and c.isascii() or c in ":_.-" else "_" for c in job_name)[:180]
    return f"reaper-{safe}-{os.getpid()}{suffix}.scope"


def move_into_leaf(directory, log):
    """Move this process into `directory`/supervisor and offer the directory's controllers to jobs.

    Returns the leaf's path.  Enabling controllers is best effort: it fails
    with EBUSY while another process still sits in `directory` (e.g. a shell
    that started reaper), and jobs are contained all the same.
    """
    leaf = os.path.join(directory, LEAF)
    try:
        os.mkdir(leaf)
    except FileExistsError:
        pass
    cgroup.write(os.path.join(leaf, "cgroup.procs"), b"0")
    try:
        with open(os.path.join(directory, "cgroup.controllers")) as f:
            available = f.read().split()
    except OSError:
        available = []
    if available:
        try:
            cgroup.enable_controllers(directory, available)
            log(f"controllers for job cgroups: {' '.join(available)}")
        except OSError as e:
            why = "another process is still in it" if e.errno == errno.EBUSY else e.strerror
            log(f"cannot enable controllers ({' '.join(available)}) in {directory}: {why}")
    return leaf
