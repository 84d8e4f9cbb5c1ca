"""Exit codes and the one exception type reaper raises for its own failures.

Every failure inside reaper becomes a ReaperError carrying the exit code the
user will see; reaper.cli is the only place that turns it into a one-line
`reaper:` message.  Codes follow the convention of timeout(1), env(1) and
chroot(1), so scripts that already understand those understand reaper.
"""

# Commands that act on a registered job (ls, ps, ports, stats, kill):
EXIT_NO_JOB = 3         # no live job of that name visible to this user
EXIT_NOT_PERMITTED = 4  # the job exists but this user may not act on it
EXIT_NOT_STOPPED = 5    # reaper kill: something of the job was still alive at the deadline

EXIT_TIMEOUT = 124      # --timeout expired
EXIT_FAILURE = 125      # reaper itself failed: bad usage, no cgroup, ...
EXIT_NOEXEC = 126       # CMD was found but could not be executed
EXIT_NOTFOUND = 127     # CMD was not found


class ReaperError(Exception):
    """A failure of reaper itself, with the exit code it maps to."""

    def __init__(self, message, code=EXIT_FAILURE):
        super().__init__(message)
        self.code = code
