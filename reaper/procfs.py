"""Reading /proc/PID/stat: the one parser of it (proc(5)).

The command name (field 2) is in parentheses and may itself contain spaces and
')', so the fields are split after the *last* ')'.  fields()[0] is then the
state (field 3), [1] the ppid, [2] the process group, [3] the session, [17]
the number of threads and [19] the start time in clock ticks since boot,
which together with the pid names one process (pids are reused, start times
within a boot are not).

Read with os.open/os.read: three system calls, against seven through a
buffered file object (fstat, an isatty ioctl, two lseeks, a second read).  It
is read once per process by the fallback's sweep and three times by every
`reaper exec`.  read() does the same for other small kernel files (/proc,
cgroupfs) until EOF; `reaper ls` reads about five such files per job, so
this is most of its own work.
"""

import os


_FLAGS = os.O_RDONLY | os.O_CLOEXEC


def read(path):
    """The whole content of a small file, as bytes; OSError as open() raises it."""
    fd = os.open(path, _FLAGS)
    try:
        # Until EOF: seq_file pseudo-files (/proc/locks) return a page at a time.
        data = os.read(fd, 65536)
        if data:
            chunks = [data]
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            data = b"".join(chunks) if len(chunks) > 1 else data
        return data
    finally:
        os.close(fd)


def fields(pid):
    """The stat fields after the command name, or None if the process is gone.

    Other errors (out of descriptors, no /proc) are raised: they say nothing
    about the process.
    """
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        data = os.read(fd, 4096)    # the line is under 1 KiB and made in one go
    except ProcessLookupError:      # gone between open and read
        return None
    finally:
        os.close(fd)
    return data[data.rfind(b")") + 2:].split()


def start_time(pid):
    """Start time in clock ticks since boot, or None if the process is gone."""
    st = fields(pid)
    return None if st is None else int(st[19])


def alive(pid):
    """Running or sleeping or stopped: neither gone nor a zombie."""
    st = fields(pid)
    return st is not None and st[0] not in (b"Z", b"X")
