"""Choosing how a job is contained, and saying why.

Two mechanisms share one small interface (signal_all, outsiders, empty,
rest, close; reaper.pidns adds a third for the init of a pid namespace):

- cgroup: the job's own cgroup v2 directory (reaper.cgroup).  Complete by
  construction: no descendant can leave it, `cgroup.kill` kills it atomically,
  and `cgroup.events` tells when it is empty.
- pgroup: subreaper + process tree (reaper.tree).  Needs no privilege; it is
  complete only for descendants that stay below reaper, which the subreaper
  guarantees for everything the job forks.  As PID 1 it is the namespace.
In both, the job is collected when the containment is empty and reaper has no
child left; signal_all() reaches processes a root job moved out of its
cgroup, because they are still below the subreaper.

`choose()` takes the strongest one available unless told otherwise, and always
returns the reason, which `-v` and `reaper doctor` print.
"""

import os
import select

from reaper import cgroup, procfs
from reaper.errors import ReaperError


class CgroupContainment:
    name = "cgroup"
    placement = None    # why job cgroups go where they go, when it is not simply reaper's own cgroup

    def __init__(self, job, reason):
        self.job = job
        self.reason = reason
        self.cgroup_procs = job.procs_file
        self.cgroup_fd = job.lock_fd
        self.events_fd = job.events_fd      # cgroup.events: POLLPRI when populated changes
        self.events_mask = select.POLLPRI
        self.reached = set()        # processes outside the cgroup already given the stop signal

    def signal_all(self, sig):
        """Signal the cgroup, then whatever of reaper's tree is outside it.

        A root job can move its processes to another cgroup (or remove the
        job cgroup after emptying it); they are still below the subreaper, so
        they are reaper's to collect.  Finding them is two reads in the common
        case: reaper's children, and cgroup.procs.
        """
        self.job.signal_all(sig)
        self.signal_outsiders(sig, self.outsiders())

    def signal_outsiders(self, sig, pids):
        """Signal these children of reaper, and their trees, skipping job cgroup members."""
        if pids:
            from reaper import tree
            tree.signal_all(sig, roots=pids, exclude=self._inside)
            self.reached.update(pids)

    def outsiders(self, new_only=False):
        """Live children of reaper that are not in the job cgroup."""
        from reaper import tree
        members = set(self.job.pids())
        return [pid for pid in tree.own_children()
                if pid not in members and not self._inside(pid) and procfs.alive(pid)
                and not (new_only and pid in self.reached)]

    def _inside(self, pid):
        own = cgroup.own_path(f"/proc/{pid}/cgroup")
        job_rel = self.job.rel
        return own is not None and job_rel is not None and (own == job_rel or own.startswith(job_rel + "/"))

    def empty(self):
        return not self.job.populated()

    @property
    def events_gone(self):
        """The job cgroup was removed (by a root job or an administrator): no more events."""
        return self.job.gone

    def rest(self):
        return self.job.pids()

    def close(self):
        self.job.close()


class TreeContainment:
    """The process tree below the subreaper; as PID 1, the whole pid namespace.

    As PID 1 the namespace also holds processes that entered it from outside
    (`docker exec`); reaper.namespace pins them, and events_fd wakes the
    supervisor when one exits, so they too get the whole grace.
    """

    name = "pgroup"
    cgroup_procs = None
    cgroup_fd = None
    events_fd = None
    events_gone = False
    members = None

    def __init__(self, reason):
        self.reason = reason
        self.pid1 = os.getpid() == 1
        if self.pid1:
            from reaper import namespace
            self.members = namespace.Members()
            self.events_fd = self.members.fd    # an epoll fd: readable when a member exits
            self.events_mask = select.POLLIN

    def signal_all(self, sig):
        if self.pid1:
            # The kernel applies kill(-1) to the namespace atomically: no pid
            # is named, so none can be stale; PID 1 itself is skipped.
            try:
                os.kill(-1, sig)
            except ProcessLookupError:
                pass
            return
        from reaper import tree
        tree.signal_all(sig)

    def outsiders(self, new_only=False):
        return []       # the tree is the job: nothing is outside it

    def empty(self):
        """Below a subreaper, no children left means no descendants (the supervisor
        knows); as PID 1, entered processes must have exited too."""
        return self.members is None or not self.members.any_alive()

    def rest(self):
        return [] if self.members is None else sorted(self.members.pinned.values())

    def close(self):
        if self.members is not None:
            self.members.close()


class Placement:
    """Where job cgroups go, and why: the answer of probe().

    path names the route exec takes: "own cgroup" (no systemd), "own
    delegated cgroup", "new transient scope", "--cgroup-parent" or
    "process-group fallback"; why says how that was decided.  Unpacks as
    (hierarchy, parent, problem) for callers that need no more.
    """

    def __init__(self, hierarchy, parent=None, problem=None, path="process-group fallback", why="",
                 delegation=None):
        self.hierarchy = hierarchy
        self.parent = parent
        self.problem = problem
        self.path = path
        self.why = why or problem or ""
        self.delegation = delegation

    def __iter__(self):
        return iter((self.hierarchy, self.parent, self.problem))


def probe(parent_option=None, act=False, log=None, name="job"):
    """Decide where job cgroups go: the one place that does.  Returns a Placement.

    With act=False (doctor, gc) nothing changes; with act=True (exec) reaper
    may ask systemd for a transient scope and move itself into a leaf.
    """
    h = cgroup.Hierarchy()
    if not h.mount:
        return Placement(h, problem="no cgroup2 hierarchy is mounted")
    if h.outside_namespace:
        return Placement(h, problem=f"own cgroup {h.own} lies outside this process's cgroup namespace "
                                    "(as after a bare nsenter into a container): the kernel moves no "
                                    "process from there into a cgroup")
    if parent_option:
        parent = h.check_parent(parent_option)
        place = Placement(h, parent, path="--cgroup-parent", why=f"given: {parent}")
    else:
        place = _default_parent(h, act, log or (lambda msg: None), name)
        if place.problem or place.parent is None:
            return place
        h = place.hierarchy     # reaper may have moved (scope, leaf)
    parent = place.parent
    if h.read_only:
        place.problem = f"the cgroup2 mount {h.mount} is read-only"
    elif not cgroup.writable(parent):
        place.problem = f"{parent} is not writable by uid {os.geteuid()}"
    else:
        own = h.own_dir()
        blocker = own and cgroup.move_blocker(own, parent)
        if blocker:
            place.problem = (f"cannot move the job from {own} into {parent}: their common ancestor "
                             f"{blocker} is in the way (its cgroup.procs is not writable by uid {os.geteuid()})")
    return place


def _default_parent(h, act, log, name):
    """reaper's own cgroup, unless systemd owns it and has not delegated it (reaper.delegation)."""
    from reaper import delegation
    own = h.own_dir()
    if own is None:
        return Placement(h, problem=f"own cgroup {h.own} is not visible under {h.mount}")
    d = delegation.check(h, h.dir_of)
    if not d.systemd:
        return Placement(h, own, path="own cgroup", why=f"no systemd runs: {d.by}", delegation=d)
    if d.delegated:
        if os.path.basename(own) == delegation.LEAF and h.dir_of(d.unit_path) == os.path.dirname(own):
            # reaper's leaf already (DelegateSubgroup=supervisor, systemd >= 254): jobs beside it
            return Placement(h, os.path.dirname(own), path="own delegated cgroup", delegation=d,
                             why=f"{d.unit} is delegated ({d.by}); reaper is in its {delegation.LEAF}/ leaf")
        if not d.at_root:
            return Placement(h, own, path="own delegated cgroup", delegation=d,
                             why=f"{own} lies inside {d.unit}, delegated ({d.by})")
        why = f"{d.unit} is delegated ({d.by}); reaper moves into {delegation.LEAF}/, job cgroups beside it"
        if act:
            delegation.move_into_leaf(own, log)
            h = cgroup.Hierarchy()      # reaper's own cgroup is now the leaf
        return Placement(h, own, path="own delegated cgroup", why=why, delegation=d)
    owner = d.unit or "the root cgroup"
    manager = "system manager" if os.geteuid() == 0 else "user manager"
    if d.delegated is None and d.error:
        return Placement(h, problem=f"cannot tell whether {owner} is delegated: {d.by}", delegation=d)
    reason = f"{owner} is systemd's and not delegated ({d.by})"
    if not act:
        return Placement(h, path="new transient scope", delegation=d,
                         why=f"{reason}; exec asks the {manager} for a transient scope with Delegate=yes")
    from reaper import systemd
    try:
        scope = _start_scope(d, name, log)
    except systemd.BusError as e:
        return Placement(h, problem=f"{reason}, and the {manager} gave no scope: {e}", delegation=d)
    h = cgroup.Hierarchy()
    own = h.own_dir()
    if own is None or os.path.basename(own) != scope:
        return Placement(h, problem=f"the {manager} started {scope}, but reaper's cgroup is {h.own}",
                         delegation=d)
    delegation.move_into_leaf(own, log)
    h = cgroup.Hierarchy()
    return Placement(h, own, path="new transient scope", delegation=d,
                     why=f"{reason}; reaper moved itself into {scope} (Delegate=yes, from the {manager})")


def _start_scope(d, name, log):
    from reaper import delegation, systemd
    user = os.geteuid() != 0
    description = f"reaper exec --name {name} (pid {os.getpid()})"
    scope = delegation.scope_name(name)
    try:
        return systemd.start_scope(scope, description, user=user)
    except systemd.UnitExists:
        retry = delegation.scope_name(name, "-" + os.urandom(4).hex())
        log(f"a unit named {scope} exists already; asking for {retry}")
        return systemd.start_scope(retry, description, user=user)


def choose(mode, name, parent_option=None, own_init=False, limits=None, log=None):
    """Set up containment for one job.  mode: auto, cgroup or pgroup.

    limits: {cgroup file: value} from reaper.limits; they need a job cgroup.

    own_init: the job runs under an init of its own (--pidns), which collects
    it; reaper's tree is then that one child.
    """
    if mode == "pgroup":
        if limits:
            raise ReaperError("resource limits need a job cgroup, not --containment pgroup")
        return _tree("chosen with --containment pgroup", own_init)
    place = probe(parent_option, act=True, log=log, name=name)
    h, parent, problem = place
    if problem is None:
        if limits:
            from reaper import limits as resource_limits
            resource_limits.prepare(parent, limits)
        cgroup.collect_stale(parent)
        home = (h.mount, h.mount_root, h.own_dir())
        try:
            job = cgroup.JobCgroup.create(parent, name, home)
        except OSError as e:
            problem = f"cannot create a cgroup under {parent}: {e.strerror}"
        else:
            if limits:
                try:
                    resource_limits.apply(job.path, limits)
                except BaseException:
                    job.close()
                    raise
            how = "cgroup.kill" if job.use_kill else "freeze, signal, thaw"
            held = CgroupContainment(job, f"{job.path} (stop by {how})")
            if place.path != "own cgroup":      # systemd runs, or --cgroup-parent: -v says why here
                held.placement = f"{place.path}: {place.why}"
            return held
    if mode == "cgroup":
        raise ReaperError(f"--containment cgroup: {problem}")
    if limits:
        raise ReaperError(f"resource limits need a job cgroup: {problem}")
    return _tree(f"subreaper + process group, because {problem}", own_init)


def _tree(reason, own_init):
    from reaper import tree
    if os.getpid() != 1 and not own_init and not tree.proc_usable():
        raise ReaperError("no cgroup to contain the job, and /proc does not show this pid namespace, "
                          "so its processes cannot be found safely: mount /proc, or use --pidns")
    return TreeContainment(reason)
