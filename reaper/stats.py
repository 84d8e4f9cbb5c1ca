"""Accounting: what a job cost, from the kernel's counters where they exist, and saying which.

Sources, best first (Documentation/admin-guide/cgroup-v2.rst):
- CPU: `cpu.stat` (user_usec, system_usec) exists in every v2 cgroup, with or
  without the cpu controller.  It counts every process that ever ran in the
  job's cgroup, escaped daemons included.
- Memory peak: `memory.peak` (memory controller enabled for the job's parent,
  Linux >= 5.19).  OOM kills: `oom_kill` in `memory.events`.
- Processes peak: `pids.peak` (pids controller, Linux >= 6.1).
- Otherwise: getrusage(RUSAGE_CHILDREN) of the supervisor.  reaper is a child
  subreaper and reaps every process of the job, so the CPU times cover the
  whole job; ru_maxrss is the largest *single* process, not the sum, and the
  output says so.  Processes peak and OOM kills are then unknown (null).
Every figure carries its source in the JSON (`*_source`) and in the summary.

The final reading happens in the supervisor after the job is collected and
before its cgroup is removed (reaper.jobhooks.collected).  `live()` serves
`reaper stats NAME` for a running job.
"""

import os
import time

from reaper.procfs import read

CG_SOURCE = "cgroup"
RUSAGE_SOURCE = "rusage"


def read_keyed(path):
    """A flat-keyed cgroup file ("key value" lines) as a dict; {} if absent."""
    try:
        words = read(path).split()
        if len(words) % 2:
            return {}
        return {words[i].decode(): int(words[i + 1]) for i in range(0, len(words) - 1, 2)}
    except (OSError, ValueError):
        return {}


def read_int(path):
    try:
        text = read(path).strip()
    except OSError:
        return None
    return None if text == b"max" else int(text)


def read_cgroup(path, brief=False):
    """Counters of a job cgroup: {cpu_user_s, cpu_system_s, memory_peak_bytes, memory_bytes,
    pids_peak, pids, oom_kills}, each None where the file is missing.  brief: CPU and
    memory now only (`reaper ls`: two files per job instead of six)."""
    cpu = read_keyed(os.path.join(path, "cpu.stat"))
    if brief:
        return {"cpu_user_s": cpu["user_usec"] / 1e6 if "user_usec" in cpu else None,
                "cpu_system_s": cpu["system_usec"] / 1e6 if "system_usec" in cpu else None,
                "memory_bytes": read_int(os.path.join(path, "memory.current"))}
    events = read_keyed(os.path.join(path, "memory.events"))
    return {
        "cpu_user_s": cpu["user_usec"] / 1e6 if "user_usec" in cpu else None,
        "cpu_system_s": cpu["system_usec"] / 1e6 if "system_usec" in cpu else None,
        "memory_peak_bytes": read_int(os.path.join(path, "memory.peak")),
        "memory_bytes": read_int(os.path.join(path, "memory.current")),
        "pids_peak": read_int(os.path.join(path, "pids.peak")),
        "pids": read_int(os.path.join(path, "pids.current")),
        "oom_kills": events.get("oom_kill") if events else None,
    }


def describe_status(status):
    if os.WIFSIGNALED(status):
        import signal
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by {name}"
    return f"exited {os.WEXITSTATUS(status)}"


class Accounting:
    """Collects one `reaper exec` job's figures for --stats and --stats-json."""

    def __init__(self, containment):
        self.t0 = time.monotonic()
        job = getattr(containment, "job", None)
        self.cgroup = job.path if job is not None else None
        self.containment = containment
        self.final = None

    def count_leftovers(self, main_pid):
        """Processes of the job other than a still-running main process, now."""
        if self.cgroup is not None and not getattr(self.containment.job, "gone", False):
            pids = self.containment.job.pids()
        else:
            from reaper import inspect     # reaper.tree.descendants() is gone on main
            pids = inspect.descendant_pids(os.getpid())
        return len([p for p in pids if p != main_pid])

    def finish(self, sup):
        wall = time.monotonic() - self.t0
        import resource
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        cg = read_cgroup(self.cgroup) if self.cgroup else {}
        doc = {"wall_s": round(wall, 6)}
        if cg.get("cpu_user_s") is not None:
            doc.update(cpu_user_s=cg["cpu_user_s"], cpu_system_s=cg["cpu_system_s"], cpu_source=CG_SOURCE)
        else:
            doc.update(cpu_user_s=round(ru.ru_utime, 6), cpu_system_s=round(ru.ru_stime, 6),
                       cpu_source=RUSAGE_SOURCE)
        if cg.get("memory_peak_bytes") is not None:
            doc.update(memory_peak_bytes=cg["memory_peak_bytes"], memory_peak_source=CG_SOURCE)
        else:
            doc.update(memory_peak_bytes=ru.ru_maxrss * 1024,
                       memory_peak_source=RUSAGE_SOURCE + " (largest single process)")
        doc.update(processes_peak=cg.get("pids_peak"),
                   processes_peak_source=CG_SOURCE if cg.get("pids_peak") is not None else None,
                   oom_kills=cg.get("oom_kills"),
                   oom_kills_source=CG_SOURCE if cg.get("oom_kills") is not None else None,
                   containment=self.containment.name, cgroup=self.cgroup)
        doc["ended"] = ("timed out" if sup.timed_out else
                        describe_status(sup.main_status) if sup.main_status is not None else "unknown")
        self.final = doc

    def result(self, code, stop_reason, leftovers):
        doc = dict(self.final or {"wall_s": round(time.monotonic() - self.t0, 6)})
        doc.update(exit_code=code, stop_reason=stop_reason, leftovers_killed=leftovers or 0)
        return doc


def _mib(n):
    return "?" if n is None else f"{n / 1048576:.1f} MiB"


def summary(doc):
    """One line for stderr."""
    mem = _mib(doc.get("memory_peak_bytes"))
    if doc.get("memory_peak_source", "").startswith(RUSAGE_SOURCE):
        mem += " (largest process, rusage)"
    procs = doc.get("processes_peak")
    ooms = doc.get("oom_kills")
    cpu_from = "" if doc.get("cpu_source") == CG_SOURCE else " (rusage)"
    ended = doc.get("ended", "unknown")
    if doc.get("stop_reason"):
        ended += f", stopped: {doc['stop_reason']}"
    return (f"reaper: stats: wall {doc.get('wall_s', 0):.3f}s, "
            f"cpu {doc.get('cpu_user_s', 0):.3f}s user + {doc.get('cpu_system_s', 0):.3f}s system{cpu_from}, "
            f"memory peak {mem}, processes peak {'?' if procs is None else procs}, "
            f"oom kills {'?' if ooms is None else ooms}, {ended}, "
            f"leftovers killed {doc.get('leftovers_killed', 0)}")


def write_json(path, doc):
    import json
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        os.write(2, f"reaper: --stats-json {path}: {e.strerror}\n".encode(errors="replace"))


def live(job, procs, brief=False):
    """Figures of a running job for `reaper stats`: from its cgroup, else summed over `procs`."""
    doc = {"name": job.name, "age_s": round(max(0.0, time.time() - job.entry.get("started", time.time())), 3),
           "processes": len(procs)}
    cg = read_cgroup(job.cgroup, brief) if job.cgroup else {}
    if cg.get("cpu_user_s") is not None:
        doc.update(cpu_user_s=cg["cpu_user_s"], cpu_system_s=cg["cpu_system_s"], cpu_source=CG_SOURCE)
    else:
        doc.update(cpu_user_s=round(sum(p.get("cpu_user_s", 0) for p in procs), 3),
                   cpu_system_s=round(sum(p.get("cpu_system_s", 0) for p in procs), 3),
                   cpu_source="/proc (live processes only)")
    if cg.get("memory_bytes") is not None:
        doc.update(memory_bytes=cg["memory_bytes"], memory_source=CG_SOURCE)
    else:
        doc.update(memory_bytes=sum(p.get("rss_bytes", 0) for p in procs),
                   memory_source="/proc (sum of RSS)")
    doc.update(memory_peak_bytes=cg.get("memory_peak_bytes"), processes_peak=cg.get("pids_peak"),
               oom_kills=cg.get("oom_kills"))
    return doc
