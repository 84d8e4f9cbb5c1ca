"""Reading /proc/PID/stat: the one parser of it (proc(5)).

The command name (field 2) is in parentheses and may itself contain spaces and
')', so the fields are split after the *last* ')'.  fields()[0] is then the
state (field 3), [1] the ppid, [2] the process group, [3] the session, [17]
the number of threads and [19] the start time in clock ticks since boot,
which together with the pid names one process (pids are reused, start times
within a boot are not).
"""


def fields(pid):
    """The stat fields after the command name, or None if the process is gone.

    Other errors (out of descriptors, no /proc) are raised: they say nothing
    about the process.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rfind(b")") + 2:].split()


def start_time(pid):
    """Start time in clock ticks since boot, or None if the process is gone."""
    st = fields(pid)
    return None if st is None else int(st[19])


def alive(pid):
    """Running or sleeping or stopped: neither gone nor a zombie."""
    st = fields(pid)
    return st is not None and st[0] not in (b"Z", b"X")
