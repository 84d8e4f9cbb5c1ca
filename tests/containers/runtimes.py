"""Driving a container runtime's CLI from the host, and reading a container's output.

Shared by the container tests (test_container_entrypoint.py says where they run).  Each
Runtime remembers the containers a test made and removes them (`rm -f`)
at the end, whatever happened.  Waiting is on events: the ready lines a job
prints, read from an attached `run` stream with a bounded select().
"""

import os
import select
import subprocess
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
JOBS = os.path.join(HERE, "jobs")
REAPER = "/opt/reaper-venv/bin/reaper-entrypoint"     # examples/Dockerfile's ENTRYPOINT
JOB = ["python3", "/jobs/job.py"]


def record(filename, line):
    """Append a measurement to the lane's artifacts (printed at the end of the lane)."""
    path = os.environ.get("REAPER_LANE_ARTIFACTS")
    if path:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, filename), "a") as f:
            f.write(line + "\n")


def note_stop(runtime, timeout_s, took, status):
    """One line of stops.txt, naming the runtime and the test that is running now.

    PYTEST_CURRENT_TEST names the test whose setup, call or teardown runs: a
    module-scoped fixture's stops would carry the name of whichever test
    happened to set it up, so such stops are noted from their own test."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    record("stops.txt", f"{runtime} stop -t {timeout_s}: {took:5.2f} s, status {status}  {test}")


class Stream:
    """Lines of a child's stdout, each wait bounded in select(), never sleeping."""

    def __init__(self, proc):
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = b""
        self.seen = []
        self.eof = False

    def next(self, timeout_s=20.0):
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buf:
            if self.eof:
                return None
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for a line; saw {self.seen}"
            if select.select([self.fd], [], [], left)[0]:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    self.eof = True
                    if self.buf:
                        self.buf += b"\n"
                    continue
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.decode(errors="replace")
        self.seen.append(line)
        return line

    def until(self, prefix, timeout_s=20.0):
        deadline = time.monotonic() + timeout_s
        while True:
            line = self.next(max(0.01, deadline - time.monotonic()))
            assert line is not None, f"EOF before a line starting {prefix!r}; saw {self.seen}"
            if line.startswith(prefix):
                return line

    def rest(self, timeout_s=30.0):
        """Every remaining line, up to EOF (the container has exited)."""
        deadline = time.monotonic() + timeout_s
        while self.next(max(0.01, deadline - time.monotonic())) is not None:
            pass
        return self.seen


class Runtime:
    """One container runtime's CLI (docker or podman), and the containers a test made."""

    def __init__(self, name, argv, env, image, run_opts=()):
        self.name = name
        self.argv = argv
        self.env = env
        self.image = image
        self.run_opts = list(run_opts)
        self.made = []
        self.streams = []

    def __call__(self, *args, timeout=60, check=True):
        proc = subprocess.run(self.argv + list(args), env=self.env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.name} {' '.join(args)}: status {proc.returncode}: {err.strip()}")
        return proc.returncode, out, err

    def name_new(self):
        name = f"reaper-test-{uuid.uuid4().hex[:10]}"
        self.made.append(name)
        return name

    def command(self, name, opts, cmd, reaper=None, entrypoint=None):
        """The `run` arguments.  By default the image's entrypoint (`reaper exec --`)
        runs `cmd`, as users run it; `reaper=[OPTION...]` runs `reaper exec OPTION... -- cmd`
        instead; `entrypoint` replaces reaper altogether."""
        args = ["run", "--name", name, "--network", "none", "-v", f"{JOBS}:/jobs:ro", *self.run_opts]
        if entrypoint:
            args += ["--entrypoint", entrypoint]
        elif reaper is not None:
            args += ["--entrypoint", REAPER]
            cmd = ["exec", *reaper, "--", *cmd]
        return args + list(opts) + [self.image] + list(cmd)

    def start(self, *opts, cmd, reaper=None, entrypoint=None):
        """`run` attached (stdout and stderr merged): returns (name, Stream)."""
        name = self.name_new()
        argv = self.argv + self.command(name, opts, cmd, reaper, entrypoint)
        proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        stream = Stream(proc)
        self.streams.append(stream)
        return name, stream

    def run(self, *opts, cmd, reaper=None, entrypoint=None, timeout=60):
        """`run` to completion: (exit status, stdout + stderr)."""
        name = self.name_new()
        code, out, err = self(*self.command(name, opts, cmd, reaper, entrypoint), timeout=timeout, check=False)
        return code, out + err

    def exit_code(self, name):
        return int(self("inspect", "--format", "{{.State.ExitCode}}", name)[1].strip())

    def stop(self, name, timeout_s, note=True):
        """`stop -t timeout_s`; returns the seconds it took.  With `note`, also noted in
        the lane's artifacts under the running test (note_stop); a stop made
        outside its test (a shared fixture's) is noted by the test itself."""
        t0 = time.monotonic()
        self("stop", "-t", str(timeout_s), name, timeout=timeout_s + 30)
        took = time.monotonic() - t0
        if note:
            note_stop(self.name, timeout_s, took, self.exit_code(name))
        return took

    def cleanup(self):
        now = ["-t", "0"] if self.name == "podman" else []     # podman's rm -f waits 10 s
        for name in self.made:
            self("rm", "-f", *now, name, check=False)
        for stream in self.streams:
            if stream.proc.poll() is None:
                stream.proc.kill()
            stream.proc.wait(timeout=10)
            stream.proc.stdout.close()


def docker_runtime():
    """The lane's dockerd; it puts containers under the lane's cgroup itself (--cgroup-parent)."""
    env = dict(os.environ, DOCKER_HOST=os.environ["REAPER_LANE_DOCKER_HOST"])
    return Runtime("docker", [os.environ.get("REAPER_LANE_DOCKER", "docker")], env,
                   os.environ.get("REAPER_LANE_IMAGE", "reaper-lane"))


def podman_missing():
    """Why podman cannot be used here, or None."""
    if os.environ.get("REAPER_LANE_PODMAN") != "1":
        return os.environ.get("REAPER_LANE_PODMAN_WHY", "podman is not configured by the lane")
    return None


def podman_runtime():
    """podman as the lane configured it (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF)."""
    why = podman_missing()
    if why:
        pytest.skip(why)
    parent = os.environ.get("REAPER_LANE_CGROUP_PARENT")
    return Runtime("podman", ["podman"], dict(os.environ),
                   os.environ.get("REAPER_LANE_PODMAN_IMAGE", "localhost/reaper-lane"),
                   ["--cgroup-parent", parent] if parent else [])
