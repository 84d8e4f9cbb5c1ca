"""Choosing how a job is contained, and saying why.

Two mechanisms share one small interface (signal_all, outsiders, empty,
close; reaper.pidns adds a third for the init of a pid namespace):

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

from reaper import cgroup
from reaper.errors import ReaperError


class CgroupContainment:
    name = "cgroup"

    def __init__(self, job, reason):
        self.job = job
        self.reason = reason
        self.cgroup_procs = job.procs_file
        self.cgroup_fd = job.lock_fd
        self.events_fd = job.events_fd
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
                if pid not in members and not self._inside(pid) and _alive(pid)
                and not (new_only and pid in self.reached)]

    def _inside(self, pid):
        own = cgroup.own_path(f"/proc/{pid}/cgroup")
        job_rel = self.job.rel
        return own is not None and job_rel is not None and (own == job_rel or own.startswith(job_rel + "/"))

    def empty(self):
        return not self.job.populated()

    def close(self):
        self.job.close()


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2:][:1] not in (b"Z", b"X")


class TreeContainment:
    """The process tree below the subreaper; as PID 1, the whole pid namespace."""

    name = "pgroup"
    cgroup_procs = None
    cgroup_fd = None
    events_fd = None

    def __init__(self, reason):
        self.reason = reason
        self.pid1 = os.getpid() == 1

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
        return True     # the supervisor knows: no children left means no descendants

    def close(self):
        pass


def probe(parent_option=None):
    """Return (hierarchy, parent directory or None, reason it cannot be used or None)."""
    h = cgroup.Hierarchy()
    if not h.mount:
        return h, None, "no cgroup2 hierarchy is mounted"
    parent = h.check_parent(parent_option) if parent_option else h.default_parent()
    if parent is None:
        return h, None, f"own cgroup {h.own} is not visible under {h.mount}"
    if h.read_only:
        return h, parent, f"the cgroup2 mount {h.mount} is read-only"
    if not cgroup.writable(parent):
        return h, parent, f"{parent} is not writable by uid {os.geteuid()}"
    return h, parent, None


def choose(mode, name, parent_option=None, own_init=False):
    """Set up containment for one job.  mode: auto, cgroup or pgroup.

    own_init: the job runs under an init of its own (--pidns), which collects
    it; reaper's tree is then that one child.
    """
    if mode == "pgroup":
        return _tree("chosen with --containment pgroup", own_init)
    h, parent, problem = probe(parent_option)
    if problem is None:
        cgroup.collect_stale(parent)
        home = (h.mount, h.mount_root, h.own_dir())
        try:
            job = cgroup.JobCgroup.create(parent, name, home)
        except OSError as e:
            problem = f"cannot create a cgroup under {parent}: {e.strerror}"
        else:
            how = "cgroup.kill" if job.use_kill else "freeze, signal, thaw"
            return CgroupContainment(job, f"{job.path} (stop by {how})")
    if mode == "cgroup":
        raise ReaperError(f"--containment cgroup: {problem}")
    return _tree(f"subreaper + process group, because {problem}", own_init)


def _tree(reason, own_init):
    from reaper import tree
    if os.getpid() != 1 and not own_init and not tree.proc_usable():
        raise ReaperError("no cgroup to contain the job, and /proc does not show this pid namespace, "
                          "so its processes cannot be found safely: mount /proc, or use --pidns")
    return TreeContainment(reason)
