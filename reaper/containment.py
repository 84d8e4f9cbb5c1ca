"""Choosing how a job is contained, and saying why.

Two mechanisms share one small interface (signal_all, empty, authoritative,
close; reaper.pidns adds a third for the init of a pid namespace):

- cgroup: the job's own cgroup v2 directory (reaper.cgroup).  Complete by
  construction: no descendant can leave it, `cgroup.kill` kills it atomically,
  and `cgroup.events` tells when it is empty.
- pgroup: subreaper + process tree (reaper.tree).  Needs no privilege; it is
  complete only for descendants that stay below reaper, which the subreaper
  guarantees for everything the job forks.

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

    def signal_all(self, sig):
        self.job.signal_all(sig)
        if self.job.gone:
            # Someone removed the cgroup under us (its processes moved out
            # first): they are still below the subreaper, so sweep the tree.
            from reaper import tree
            tree.signal_all(sig)

    def empty(self):
        return not self.job.populated()

    @property
    def authoritative(self):
        """empty() is the whole truth, unless the cgroup was removed under us."""
        return not self.job.gone

    def close(self):
        self.job.close()


class TreeContainment:
    name = "pgroup"
    cgroup_procs = None
    cgroup_fd = None
    events_fd = None
    authoritative = False

    def __init__(self, reason):
        self.reason = reason

    def signal_all(self, sig):
        from reaper import tree
        tree.signal_all(sig)

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


def choose(mode, name, parent_option=None):
    """Set up containment for one job.  mode: auto, cgroup or pgroup."""
    if mode == "pgroup":
        return TreeContainment("chosen with --containment pgroup")
    _, parent, problem = probe(parent_option)
    if problem is None:
        cgroup.collect_stale(parent)
        try:
            job = cgroup.JobCgroup.create(parent, name)
        except OSError as e:
            problem = f"cannot create a cgroup under {parent}: {e.strerror}"
        else:
            how = "cgroup.kill" if job.use_kill else "freeze, signal, thaw"
            return CgroupContainment(job, f"{job.path} (stop by {how})")
    if mode == "cgroup":
        raise ReaperError(f"--containment cgroup: {problem}")
    return TreeContainment(f"subreaper + process group, because {problem}")
