"""Resource limits on the job's cgroup: --memory-max, --pids-max, --cpu-max.

A limit is a file in the job's cgroup (`memory.max`, `pids.max`, `cpu.max`),
present only when the controller is enabled in the *parent's*
`cgroup.subtree_control` (Documentation/admin-guide/cgroup-v2.rst,
"Controlling Controllers").  reaper enables it there when it may, before the
job cgroup is created, and fails with one line and 125 before the job starts
when it cannot, naming why:
- the controller is not in the parent's `cgroup.controllers`: bound to a
  cgroup v1 hierarchy (hybrid layouts such as this project's CI host) or not
  delegated by the parent's owner;
- writing `cgroup.subtree_control` fails with EBUSY: the parent has processes
  of its own (the "no internal process" rule; the root cgroup is exempt).
  Usually reaper itself sits there; start reaper in a leaf cgroup of its own
  (systemd: DelegateSubgroup=) and pass the parent as --cgroup-parent;
- EACCES/EPERM: the parent is not delegated to this user.

With a memory limit reaper also writes `memory.oom.group` = 1, so the OOM
killer takes the whole job (main process included: exit 137) rather than one
arbitrary process, and `memory.swap.max` = 0 where it exists, so the limit is
not silently stretched by swap.  CPU is a bandwidth limit: `1.5` means
150 ms of CPU per 100 ms period.
"""

import errno
import os

from reaper import cgroup
from reaper.errors import ReaperError

MEMORY_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
                "g": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40}
CPU_PERIOD_US = 100000
CONTROLLER_OF = {"memory.max": "memory", "pids.max": "pids", "cpu.max": "cpu"}
OPTION_OF = {"memory.max": "--memory-max", "pids.max": "--pids-max", "cpu.max": "--cpu-max"}


def parse_memory(text):
    """`512M`, `1.5G`, `100k`, `4096` (bytes; K/M/G/T are powers of 1024) -> bytes."""
    t = text.strip().lower()
    i = len(t)
    while i and t[i - 1].isalpha():
        i -= 1
    number, unit = t[:i], t[i:]
    try:
        value = float(number) * MEMORY_UNITS[unit]
    except (KeyError, ValueError):
        value = -1
    if not 4096 <= value < 2 ** 62 or value != value:
        raise ReaperError(f"--memory-max: invalid size {text!r} (examples: 512M, 1.5G, 100000000; "
                          f"at least 4K)")
    return int(value)


def parse_pids(text):
    try:
        value = int(text.strip())
    except ValueError:
        value = 0
    if not 1 <= value <= 4194304:
        raise ReaperError(f"--pids-max: invalid number {text!r} (a whole number of processes, "
                          f"1 to 4194304)")
    return value


def parse_cpu(text):
    """CPUs as a decimal, e.g. 0.5 or 1.5 -> "quota period" for cpu.max."""
    try:
        cpus = float(text.strip())
    except ValueError:
        cpus = -1
    if not 0.01 <= cpus <= 4096:
        raise ReaperError(f"--cpu-max: invalid CPU count {text!r} (a decimal number of CPUs, "
                          f"0.01 to 4096, e.g. 1.5)")
    return f"{round(cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}"


def parse(memory=None, pids=None, cpu=None):
    """Options as given -> {cgroup file: value to write}; empty if none."""
    limits = {}
    if memory is not None:
        limits["memory.max"] = str(parse_memory(memory))
    if pids is not None:
        limits["pids.max"] = str(parse_pids(pids))
    if cpu is not None:
        limits["cpu.max"] = parse_cpu(cpu)
    return limits


def _read_words(path):
    try:
        with open(path) as f:
            return f.read().split()
    except OSError:
        return None


def _bound_to_v1(controller):
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.startswith("cgroup ") and controller in right.split()[-1].split(","):
                    return True
    except OSError:
        pass
    return False


def prepare(parent, limits):
    """Make the controllers `limits` need available to job cgroups under `parent`, or say why not."""
    needed = sorted({CONTROLLER_OF[f] for f in limits})
    available = _read_words(os.path.join(parent, "cgroup.controllers")) or []
    for ctl in needed:
        if ctl not in available:
            option = ", ".join(OPTION_OF[f] for f in limits if CONTROLLER_OF[f] == ctl)
            why = ("it is bound to a cgroup v1 hierarchy on this machine" if _bound_to_v1(ctl)
                   else "the parent's owner has not delegated it")
            raise ReaperError(f"{option} needs the {ctl} controller, which {parent} does not offer "
                              f"(cgroup.controllers: {' '.join(available) or 'none'}): {why}")
    enabled = _read_words(os.path.join(parent, "cgroup.subtree_control")) or []
    missing = [c for c in needed if c not in enabled]
    if not missing:
        return
    try:
        cgroup.enable_controllers(parent, missing)
    except OSError as e:
        what = f"cannot enable {', '.join(missing)} in {parent}/cgroup.subtree_control"
        if e.errno == errno.EBUSY:
            raise ReaperError(f"{what}: {parent} has processes of its own (cgroup v2 no-internal-process "
                              f"rule); start reaper in a leaf cgroup and pass --cgroup-parent {parent}")
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ReaperError(f"{what}: not delegated to uid {os.geteuid()} ({e.strerror})")
        raise ReaperError(f"{what}: {e.strerror}")


def apply(job_path, limits):
    """Write the limits into the (still empty) job cgroup."""
    extra = {}
    if "memory.max" in limits:
        extra = {"memory.oom.group": "1", "memory.swap.max": "0"}
    for fname, value in list(limits.items()) + list(extra.items()):
        path = os.path.join(job_path, fname)
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            if fname in extra:
                continue    # no swap accounting on this kernel: nothing to stretch
            raise ReaperError(f"cannot set {fname}: {job_path} has no such file")
        try:
            os.write(fd, value.encode())
        except OSError as e:
            raise ReaperError(f"cannot set {fname} to {value}: {e.strerror}")
        finally:
            os.close(fd)
