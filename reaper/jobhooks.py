"""What `reaper exec` does around the supervisor: register, listen for `reaper kill`, account.

The supervisor (reaper.supervisor) knows nothing of the registry or of stats;
it calls these hooks at four points of its life:
- started(sup): the job's first process has exec'ed -> publish the registry entry;
- on_readable(sup, fd): the control socket is readable -> sup.request_stop(...);
- stopping(sup, why): the stop ladder begins (first call only counts what is left);
- collected(sup): nothing of the job is left, the cgroup still exists -> final accounting.
The CLI calls close() after the supervisor returned, and report(code) for --stats.

Costs on the exec path, measured in bench/ (metric `registry`): the name claim
(one open + flock), one small file written before the start (the registry must
be writable) and written again with the main pid and renamed into place, one
socket autobound; no module beyond `_socket` and
`fcntl` is imported unless --stats asks.
`REAPER_NO_REGISTRY=1` switches registration off (the bench's "before").
"""

import errno
import os
import time

from reaper.errors import ReaperError

# Out of descriptors or memory, nothing else would work either: fail at once,
# in one line, instead of warning and failing again a moment later.
EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)


def _unregistered(e, name, explicit, log):
    """Registration failed: raise for a named job or exhausted resources, else warn.

    An unnamed job loses only `reaper ls/kill` by name; a read-only root (a
    container run with --read-only) is said under -v only, not on every run.
    """
    cause = e if isinstance(e, OSError) else e.__context__
    if isinstance(cause, OSError) and cause.errno in EXHAUSTED:
        raise ReaperError(f"cannot register the job: {cause.strerror} (check ulimit -n)")
    if explicit:
        raise ReaperError(f"--name {name}: cannot register the job: {e}")
    if isinstance(cause, OSError) and cause.errno == errno.EROFS:
        log(f"running unregistered ({e})")
    else:       # a registry that is tampered with, full, ...: worth a line
        os.write(2, f"reaper: warning: running unregistered ({e})\n".encode(errors="replace"))


class ExecHooks:
    def __init__(self, name, explicit, argv, stats_summary=False, stats_json=None, log=None):
        self.argv = argv
        self.log = log or (lambda msg: None)
        self.registration = None
        self.listener = None
        self.stats_summary = stats_summary
        self.stats_wanted = stats_summary or stats_json is not None
        self.stats_json = stats_json
        self.accounting = None
        self.first_stop = None
        self.leftovers = None
        self.name = name
        self.explicit = explicit
        self.fields = None
        if os.environ.get("REAPER_NO_REGISTRY"):
            return
        from reaper import registry
        try:
            self.registration = registry.Registration(name, explicit)
        except registry.NameTaken:
            raise
        except (ReaperError, OSError) as e:
            _unregistered(e, name, explicit, self.log)
            return
        self.name = self.registration.name

    @property
    def fds(self):
        return [self.listener.fd] if self.listener is not None else []

    # -- called by the CLI once the containment exists, before the job starts --

    def prepare(self, containment, grace_s):
        """Bind the control socket and write the entry, unpublished (main pid still unknown).

        Done before the job starts so that a registry that cannot be written
        (read-only, full, removed) fails a named job before it runs; an
        unnamed job then runs unregistered, with a warning.
        """
        if self.registration is None:
            return
        from reaper import control
        reg = self.registration
        try:
            if os.environ.get("REAPER_NO_CONTROL_SOCKET"):     # tests: force kill's fallback
                raise OSError(errno.ENOTSUP, "disabled by REAPER_NO_CONTROL_SOCKET")
            self.listener = control.Listener()
        except OSError as e:
            self.log(f"no control socket ({e.strerror}); `reaper kill` will signal the supervisor")
        job = getattr(containment, "job", None)
        self.fields = {"main_pid": None, "containment": containment.name, "argv": list(self.argv),
                       "cgroup": job.path if job is not None else None,
                       "cgroup_ino": os.fstat(job.lock_fd).st_ino if job is not None else None,
                       "ctl": self.listener.name if self.listener else None, "cwd": _cwd(),
                       "grace_s": grace_s}
        try:
            reg.publish(self.fields, final=False)
        except (ReaperError, OSError) as e:
            self.close()
            _unregistered(e, self.name, self.explicit, self.log)

    # -- called by the supervisor -----------------------------------------

    def started(self, sup):
        self.started_at = time.monotonic()
        if self.stats_wanted:
            from reaper import stats
            self.accounting = stats.Accounting(sup.containment)
        reg = self.registration
        if reg is None or self.fields is None:
            return
        from reaper import registry
        self.fields.update(main_pid=sup.pid, grace_s=sup.grace_s)
        try:
            st = registry.proc_stat(sup.pid)
            self.fields.update(main_starttime=int(st[19]), pgid=int(st[2]), sid=int(st[3]))
        except (OSError, ValueError, IndexError):
            pass
        try:
            reg.publish(self.fields)
        except (ReaperError, OSError) as e:
            os.write(2, f"reaper: warning: running unregistered ({e})\n".encode(errors="replace"))
            return
        self.log(f"registered as {reg.name!r} in {reg.path}")

    def on_readable(self, sup, fd):
        for sig, grace_s, pid, uid in self.listener.receive():
            sup.request_stop(sig, grace_s, f"`reaper kill` from pid {pid} (uid {uid})")

    def stopping(self, sup, why):
        if self.first_stop is not None:
            return
        self.first_stop = why
        if self.accounting is not None:
            self.leftovers = self.accounting.count_leftovers(sup.pid if sup.main_status is None else None)

    def collected(self, sup):
        if self.accounting is not None:
            try:
                self.accounting.finish(sup)
            except (OSError, ValueError) as e:
                os.write(2, f"reaper: --stats: cannot read the job's counters: {e}\n".encode(errors="replace"))

    # -- called by the CLI ------------------------------------------------

    def close(self):
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.registration is not None:
            self.registration.close()
            self.registration = None

    def report(self, code):
        """--stats / --stats-json, once the exit code is known."""
        if self.accounting is None:
            return
        doc = self.accounting.result(code, self.first_stop, self.leftovers)
        from reaper import stats
        if self.stats_json is not None:
            stats.write_json(self.stats_json, doc)
        if self.stats_summary:
            os.write(2, (stats.summary(doc) + "\n").encode(errors="replace"))


def _cwd():
    try:
        return os.getcwd()
    except OSError:
        return None
