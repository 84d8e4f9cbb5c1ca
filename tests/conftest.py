"""Test harness: every test runs reaper inside a cgroup of its own, and leaks fail the test.

The session owns one cgroup subtree, `<pytest's cgroup>/reaper-tests.<uuid>`;
each test gets a child cgroup there and every process a test starts (reaper
itself, or a tree started without reaper for a negative control) joins it
before exec.  Because nothing can leave a cgroup by forking, the test's
cgroup is the exact list of everything the test created, whatever containment
reaper used.  After the test:
- any process still in it, or any cgroup directory left below it, fails the
  test as a leak (reaper promises to return only when nothing is left);
- everything is then killed with cgroup.kill and removed, so the next test
  starts clean even after a failure.
Processes also carry REAPER_TEST_MARKER=<uuid> in their environment; the
session sweeps /proc for it at the end as a second net.

Waiting is on events: ready lines over pipes, process exit, cgroup.events.
"""

import functools
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HELPERS = os.path.join(HERE, "helpers")
MARKER = uuid.uuid4().hex[:12]

sys.path.insert(0, ROOT)
from reaper import cgroup, procfs  # noqa: E402

# The jobs `watch top` and tmux need a terminal type, and the caller may give
# none (`systemd-run --pipe`, ssh without a pty) or one without terminfo here.
# No child draws on the caller's terminal, so every child gets the same one.
os.environ["TERM"] = "xterm"


@functools.lru_cache(maxsize=None)
def _refusal(argv):
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if proc.returncode == 0:
        return None
    return (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]


def require(*argv):
    """Skip the test unless the probe `argv` (e.g. `unshare --mount true`) succeeds here.

    Namespaces are refused in places: a chroot refuses `unshare --mount` when /
    is not a mount point, and user namespaces; an unprivileged user gets no
    mount or pid namespace; only root can drop to nobody.  Probed once per session.
    """
    why = _refusal(tuple(argv))
    if why is not None:
        pytest.skip(f"this machine refuses `{' '.join(argv)}`: {why}")


def _cg_write(path, data):
    with open(path, "w") as f:
        f.write(data)


def cg_populated(path):
    try:
        with open(os.path.join(path, "cgroup.events")) as f:
            return "populated 1" in f.read()
    except FileNotFoundError:
        return False


def cg_pids(path):
    pids = []
    for root, _, files in os.walk(path):
        if "cgroup.procs" in files:
            with open(os.path.join(root, "cgroup.procs")) as f:
                pids += [int(x) for x in f.read().split()]
    return pids


def cg_wait_empty(path, timeout_s=10.0):
    """Block on cgroup.events until `path` is not populated (or the deadline)."""
    fd = os.open(os.path.join(path, "cgroup.events"), os.O_RDONLY)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI)
        deadline = time.monotonic() + timeout_s
        while b"populated 1" in os.pread(fd, 4096, 0):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            poller.poll(left * 1000)
        return True
    finally:
        os.close(fd)


def cg_destroy(path):
    """Kill everything in `path` and below, then remove the directories."""
    if not os.path.isdir(path):
        return
    kill = os.path.join(path, "cgroup.kill")
    if os.path.exists(kill):
        _cg_write(kill, "1")
    cg_wait_empty(path)
    for root, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            os.rmdir(os.path.join(root, d))
    os.rmdir(path)


def zombie_children(proc):
    """The pids of a psutil.Process's children that are zombies now.  A child
    reaped between the listing and the read of its state is none (psutil's
    status() would raise NoSuchProcess: the race made a test flaky)."""
    return [c.pid for c in proc.children() if (procfs.fields(c.pid) or [b""])[0] == b"Z"]


def describe(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        return f"{pid}:{cmdline}"
    except OSError:
        return str(pid)


# Controllers the environment guarantees in pytest's own cgroup (the VM lane
# exports cpu,memory,pids); tests of limits need them in the test cgroups.
TEST_CONTROLLERS = os.environ.get("REAPER_TEST_CONTROLLERS", "").replace(",", " ").split()


def _delegate_controllers(parent):
    """Make TEST_CONTROLLERS available below `parent`; return how to undo it.

    cgroup v2 lets a cgroup enable controllers for its children only while it
    has no processes of its own (the no-internal-process rule), so pytest
    first moves into a leaf of its own, `parent/pytest.<marker>`.
    """
    leaf = os.path.join(parent, f"pytest.{MARKER}")
    os.mkdir(leaf)
    _cg_write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
    _cg_write(os.path.join(parent, "cgroup.subtree_control"), " ".join("+" + c for c in TEST_CONTROLLERS))

    def undo():
        _cg_write(os.path.join(parent, "cgroup.subtree_control"), " ".join("-" + c for c in TEST_CONTROLLERS))
        _cg_write(os.path.join(parent, "cgroup.procs"), str(os.getpid()))
        os.rmdir(leaf)
    return undo


@pytest.fixture(scope="session", autouse=True)
def placement():
    """Where this session may make cgroups, decided before any test makes one.

    The harness follows reaper's own rule (containment.probe): never write in
    a cgroup systemd owns and has not delegated.  Under systemd this may move
    pytest into a transient scope, or into its delegated cgroup's leaf, so it
    happens first, for every test (the bench's self-test makes cgroups too).
    """
    from reaper import containment
    try:
        return containment.probe(act=True, name="pytest")
    except Exception as e:      # reported by the tests that need a cgroup
        return containment.Placement(None, problem=str(e))


def marked_processes(variable, value):
    """Pids of every process whose environment has variable=value (a test's marker)."""
    marker = f"{variable}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.fixture(scope="session")
def cg_root(placement):
    place = placement
    parent = place.parent
    if place.problem or parent is None:
        pytest.skip(f"tests need a cgroup they may write: {place.problem or place.why}")
    undo = _delegate_controllers(parent) if TEST_CONTROLLERS else None
    path = os.path.join(parent, f"reaper-tests.{MARKER}")
    os.mkdir(path)
    if TEST_CONTROLLERS:
        _cg_write(os.path.join(path, "cgroup.subtree_control"), " ".join("+" + c for c in TEST_CONTROLLERS))
    yield path
    cg_destroy(path)
    if undo:
        undo()
    leftovers = marked_processes("REAPER_TEST_MARKER", MARKER)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not leftovers, f"processes outside the test cgroups survived: {leftovers}"


class Sandbox:
    """One test's cgroup, and the processes it starts there."""

    def __init__(self, path, tmpdir):
        self.path = path
        self.tmp = tmpdir
        self.env = dict(os.environ, REAPER_TEST_MARKER=MARKER, PYTHONPATH=ROOT)
        self.env.pop("REAPER_NO_CGROUP_KILL", None)
        self.procs = []

    def _join(self):
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write("0")

    def spawn(self, argv, preexec=None, env=None, **kw):
        """Start argv inside the test cgroup (joined before exec)."""
        def setup():
            self._join()
            if preexec:
                preexec()
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, preexec_fn=setup, env=env or self.env, **kw)
        self.procs.append(proc)
        return proc

    def reaper(self, *args, env=None, **kw):
        """Start `python -m reaper <args>` in the test cgroup."""
        return self.spawn([sys.executable, "-m", "reaper", *args], env=env, **kw)

    def run(self, *args, timeout=30, **kw):
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        proc = self.reaper(*args, **kw)
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err

    def job_pids(self):
        return cg_pids(self.path)

    def assert_empty(self):
        """Nothing of anything this test started is alive (the kernel's view)."""
        pids = self.job_pids()
        assert not pids, f"survivors: {[describe(p) for p in pids]}"

    def kill_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.kill()
                except OSError:
                    pass
        if os.path.exists(os.path.join(self.path, "cgroup.kill")):
            _cg_write(os.path.join(self.path, "cgroup.kill"), "1")
        cg_wait_empty(self.path)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def sandbox(cg_root, request, tmp_path):
    name = request.node.name.replace("/", "_").replace("[", ".").replace("]", "")[:60]
    path = os.path.join(cg_root, f"{name}.{uuid.uuid4().hex[:6]}")
    os.mkdir(path)
    box = Sandbox(path, tmp_path)
    # A job registry of the test's own (reaper.registry: BASE/<uid>/), sticky
    # and world-writable like /tmp so that `nobody` can make its own there.
    box.registry = tempfile.mkdtemp(prefix=f"reaper-registry-{MARKER}-")
    os.chmod(box.registry, 0o1777)
    box.env["REAPER_REGISTRY"] = box.registry
    failed_before = request.session.testsfailed
    try:
        yield box
    finally:
        for proc in box.procs:
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        leaked = [describe(p) for p in box.job_pids()]
        leaked_dirs = [d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))]
        box.kill_all()
        cg_destroy(path)
        shutil.rmtree(box.registry, ignore_errors=True)
        if request.session.testsfailed == failed_before:
            assert not leaked, f"test leaked processes: {leaked}"
            assert not leaked_dirs, f"test leaked cgroups: {leaked_dirs}"


@pytest.fixture(params=["cgroup", "pgroup"])
def mode(request):
    return request.param


def helper(name):
    return [sys.executable, os.path.join(HELPERS, name)]


class Lines:
    """Lines from a pipe, each wait bounded and blocked in select(), never sleeping."""

    def __init__(self, stream):
        self.fd = stream.fileno()
        self.buf = b""
        self.seen = []

    def next(self, timeout_s=10.0):
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for a line; saw {self.seen}"
            if select.select([self.fd], [], [], left)[0]:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return None
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.decode(errors="replace")
        self.seen.append(line)
        return line

    def until(self, prefix, timeout_s=10.0):
        deadline = time.monotonic() + timeout_s
        while True:
            line = self.next(max(0.0, deadline - time.monotonic()))
            assert line is not None, f"EOF before a line starting {prefix!r}; saw {self.seen}"
            if line.startswith(prefix):
                return line


def usable_by_others(path):
    """Can another user execute `path` (every directory on the way searchable)?"""
    path = os.path.realpath(path)
    while path != "/":
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        path = os.path.dirname(path)
    return True


NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all"]


@pytest.fixture(scope="session")
def world():
    """reaper and the test helpers where user `nobody` can read them.

    The checkout may live under a 0700 home; Debian's python3 (which the venv
    under /opt links to) is world-usable.  Returns the directory; its
    `reaper/` goes on PYTHONPATH and its `helpers/` holds the test jobs.
    """
    require(*NOBODY, "true")
    if not usable_by_others(sys.executable):
        pytest.skip(f"{sys.executable} is not usable by other users (install with scripts/install.sh)")
    base = tempfile.mkdtemp(prefix=f"reaper-world-{MARKER}-")
    shutil.copytree(os.path.join(ROOT, "reaper"), os.path.join(base, "reaper"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(HELPERS, os.path.join(base, "helpers"), ignore=shutil.ignore_patterns("__pycache__"))
    for root, _, files in os.walk(base):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    yield base
    shutil.rmtree(base, ignore_errors=True)
