"""reaper as a container's entrypoint (PID 1) under real runtimes: stop, statuses, zombies, faults.

The documented behaviour these tests hold reaper to (README, "As a container
entrypoint"):
- `docker stop` / `podman stop` send TERM to reaper; every process of the job,
  escaped daemons included, gets TERM and the full grace; SIGKILL only after.
- As PID 1 reaper's default --grace is shorter than the runtimes' default stop
  timeout (10 s), so reaper's own SIGKILL, not the runtime's, ends a job that
  ignores TERM, and the container's status is the job's (143 for TERM), not
  137.  With a --grace above the stop timeout the runtime's SIGKILL wins.
- Orphans of `docker exec` / `podman exec` sessions are reaped (PID 1 adopts
  them); what such a session leaves running gets TERM and the grace too.
Each test names its runtime; `runtime` runs the test with docker and podman.

These tests run only inside the container lane (lanes/containers/run), which
starts its own dockerd (and configures podman), builds the reaper image with
examples/Dockerfile, and passes what it made through the environment:
  REAPER_LANE_DOCKER_HOST   unix socket of the lane's dockerd (required)
  REAPER_LANE_DOCKER        the docker client to use (default: docker)
  REAPER_LANE_IMAGE         the image with reaper as its entrypoint
  REAPER_LANE_CGROUP_PARENT the lane's cgroup, where containers go (podman
                            gets it as --cgroup-parent; dockerd has it already)
  REAPER_LANE_PODMAN        1 when podman is configured (CONTAINERS_CONF, ...),
                            REAPER_LANE_PODMAN_IMAGE its image; otherwise
                            REAPER_LANE_PODMAN_WHY says why not
  REAPER_LANE_ARTIFACTS     a directory for output worth keeping (doctor's
                            output, every stop's time and status), printed at
                            the end of the lane
Elsewhere every test here skips with that reason.
(No conftest.py here: the suite's modules import tests/conftest.py by name.)
"""

import json
import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from runtimes import HERE, JOB, REAPER, docker_runtime, note_stop, podman_missing, podman_runtime

pytestmark = pytest.mark.skipif(not os.environ.get("REAPER_LANE_DOCKER_HOST"),
                                reason="container tests run in the container lane: bash lanes/containers/run")

STOP_TIMEOUT_S = 10         # docker's and podman's default
K8S_STOP_TIMEOUT_S = 30     # Kubernetes' terminationGracePeriodSeconds default


@pytest.fixture
def docker():
    rt = docker_runtime()
    try:
        yield rt
    finally:
        rt.cleanup()


@pytest.fixture(params=["docker", "podman"])
def runtime(request):
    rt = docker_runtime() if request.param == "docker" else podman_runtime()
    try:
        yield rt
    finally:
        rt.cleanup()


@pytest.fixture
def artifacts():
    path = os.environ.get("REAPER_LANE_ARTIFACTS")
    if path:
        os.makedirs(path, exist_ok=True)
    return path


def daemons_ready(stream, count):
    """Wait until the job has `count` daemons up and says ready; return the daemons' pids."""
    pids = []
    while True:
        line = stream.next()
        assert line is not None, f"the job ended before it was ready; saw {stream.seen}"
        if re.match(r"daemon \d+ ready$", line):
            pids.append(line.split()[1])
        elif line.startswith("ready "):
            assert len(pids) == count, stream.seen
            return pids


def got_term(lines, who):
    return f"{who} got TERM" in lines


# -- docker stop --------------------------------------------------------------

def test_stop_gives_every_process_term_and_returns_the_jobs_status(runtime):
    name, out = runtime.start(cmd=[*JOB, "--daemons", "2"])
    daemons = daemons_ready(out, 2)
    took = runtime.stop(name, STOP_TIMEOUT_S)
    lines = out.rest()
    for pid in daemons:
        assert got_term(lines, f"daemon {pid}"), f"escaped daemon {pid} got no TERM: {lines}"
        assert f"daemon {pid} exits" in lines, lines
    assert runtime.exit_code(name) == 143
    assert took < STOP_TIMEOUT_S - 0.5, f"stop took {took:.2f}s"     # 0.2-0.3 s measured


# Each case waits out reaper's whole grace (8 s as PID 1), so they run at once.
LADDER = [("docker", STOP_TIMEOUT_S), ("podman", STOP_TIMEOUT_S), ("docker", K8S_STOP_TIMEOUT_S)]


@pytest.fixture(scope="module")
def ladder():
    """Stop a job with a TERM-ignoring escaped daemon under each (runtime, stop timeout), concurrently.

    Yields {(runtime, timeout): {"took", "lines", "status", "daemon"}}; a
    runtime the lane did not configure is missing from it.
    """
    made = {"docker": docker_runtime()}
    if not podman_missing():
        made["podman"] = podman_runtime()
    cases = []
    try:
        for rt_name, timeout_s in LADDER:
            if rt_name in made:
                rt = made[rt_name]
                name, out = rt.start(cmd=[*JOB, "--daemons", "1", "--daemons-ignore-term"], reaper=["-v"])
                cases.append((rt_name, timeout_s, rt, name, out))
        daemons = {c[:2]: daemons_ready(c[4], 1)[0] for c in cases}
        with ThreadPoolExecutor(len(cases)) as pool:
            took = dict(zip([c[:2] for c in cases],
                            pool.map(lambda c: c[2].stop(c[3], c[1], note=False), cases)))
        yield {c[:2]: {"took": took[c[:2]], "lines": c[4].rest(), "status": c[2].exit_code(c[3]),
                       "daemon": daemons[c[:2]]} for c in cases}
    finally:
        for rt in made.values():
            rt.cleanup()


@pytest.mark.parametrize("rt_name, timeout_s", LADDER, ids=[f"{r}-t{t}" for r, t in LADDER])
def test_stop_kills_a_term_ignoring_daemon_before_the_runtime_does(ladder, rt_name, timeout_s):
    """No --grace: reaper's PID 1 default (8 s) runs out before the stop timeout
    (10 s: docker and podman; 30 s: Kubernetes' terminationGracePeriodSeconds)."""
    if (rt_name, timeout_s) not in ladder:
        pytest.skip(podman_missing())
    case = ladder[rt_name, timeout_s]
    note_stop(rt_name, timeout_s, case["took"], case["status"])     # the fixture's stop, under this test
    lines, daemon = case["lines"], case["daemon"]
    assert got_term(lines, f"daemon {daemon}"), lines
    assert f"daemon {daemon} ignores TERM" in lines, lines
    assert any(line.startswith("reaper: killing") for line in lines), lines
    # 137 would mean the runtime's SIGKILL hit reaper before its own ladder ended.
    assert case["status"] == 143, lines
    # The daemon had the whole grace.  The status, not the time, says whose
    # SIGKILL came first: at load 300 `docker stop -t 10` returned after
    # 10.05 s with 143 (reaper had exited; the runtime saw it late).
    assert 7.0 < case["took"] < timeout_s + 5, f"stop took {case['took']:.2f}s"


def test_stop_returns_the_status_of_a_job_that_traps_term(runtime):
    name, out = runtime.start(cmd=[*JOB, "--daemons", "1", "--trap-term", "7"])
    [daemon] = daemons_ready(out, 1)
    runtime.stop(name, STOP_TIMEOUT_S)
    lines = out.rest()
    assert "main " in " ".join(lines) and any(re.match(r"main \d+ got TERM$", x) for x in lines), lines
    assert got_term(lines, f"daemon {daemon}"), lines
    assert runtime.exit_code(name) == 7


def test_a_grace_above_the_stop_timeout_loses_to_the_runtimes_sigkill(docker):
    """The rule the README states: keep --grace below the stop timeout."""
    name, out = docker.start(cmd=[*JOB, "--daemons", "1", "--daemons-ignore-term"], reaper=["--grace", "20s"])
    daemons_ready(out, 1)
    took = docker.stop(name, 2)
    out.rest()
    assert docker.exit_code(name) == 137
    assert 1.5 < took < 10, f"stop took {took:.2f}s"


def test_stop_right_after_start_ends_the_job_not_the_runtime(runtime):
    """TERM right after `run -d`: reaper must still stop the job itself.

    The kernel discards a signal sent to a PID 1 without a handler for it;
    the image's entrypoint (scripts/reaper-entrypoint.c) blocks the stop
    signals until reaper.early has its handlers, so none is lost while Python
    starts.  (With the Python launcher as the entrypoint, 4 of 46 such TERMs
    were lost.)  Five tries with a 2 s stop timeout: a lost TERM costs 2 s.
    Whatever happens, the container ends and nothing of it is left (the
    runtime's SIGKILL takes the pid namespace); teardown removes it.
    """
    outcomes = []
    for _ in range(5):
        name = runtime.name_new()
        runtime(*runtime.command(name, ["-d"], [*JOB, "--daemons", "1"]))
        took = runtime.stop(name, 2)
        assert runtime("inspect", "--format", "{{.State.Running}}", name)[1].strip() == "false"
        outcomes.append((runtime.exit_code(name), took, runtime("logs", name)[1]))
    assert [code for code, _, _ in outcomes] == [143] * 5, (
        f"TERM right after start was lost (137: the runtime's SIGKILL): {outcomes}")


def test_read_only_root_filesystem(runtime):
    """reaper writes nothing but the job's cgroup: --read-only changes nothing."""
    code, output = runtime.run("--read-only", cmd=[*JOB, "--daemons", "1", "--exit", "3"])
    assert code == 3, output
    assert "reaper:" not in output, output
    name, out = runtime.start("--read-only", cmd=[*JOB, "--daemons", "1"])
    [daemon] = daemons_ready(out, 1)
    runtime.stop(name, STOP_TIMEOUT_S)
    assert got_term(out.rest(), f"daemon {daemon}")
    assert runtime.exit_code(name) == 143


# -- exit statuses ------------------------------------------------------------

@pytest.mark.parametrize("args, status", [
    (["--exit", "0"], 0),
    (["--exit", "3"], 3),
    (["--kill-self", "TERM"], 143),
    (["--kill-self", "KILL"], 137),
], ids=["0", "3", "TERM", "KILL"])
def test_the_container_exits_with_the_jobs_status(runtime, args, status):
    code, output = runtime.run(cmd=[*JOB, "--daemons", "1", *args])
    assert code == status, output
    daemon = re.search(r"daemon (\d+) ready", output).group(1)
    assert f"daemon {daemon} got TERM" in output, output


def test_a_job_that_closes_stdout(docker):
    code, output = docker.run(cmd=[*JOB, "--daemons", "1", "--close-stdout", "--exit", "5"])
    assert code == 5, output
    assert "reaper:" not in output, output


def test_timeout_stops_the_whole_job_with_124(docker):
    t0 = time.monotonic()
    code, output = docker.run(cmd=[*JOB, "--daemons", "2"], reaper=["--timeout", "1s"])
    took = time.monotonic() - t0
    assert code == 124, output
    assert output.count("got TERM") == 2, output      # both daemons; main dies of it silently
    assert 1 <= took < 20, f"took {took:.2f}s"       # run + 1 s + the stop


# -- zombies of docker exec ---------------------------------------------------

def zombies(rt, name):
    out = rt("exec", name, "python3", "/jobs/zombies.py")[1]
    return [line.split()[1] for line in out.splitlines() if line.startswith("zombie ")]


def make_orphans(rt, name, count):
    out = rt("exec", name, "python3", "/jobs/orphans.py", str(count))[1]
    orphans = [line.split()[1] for line in out.splitlines() if line.startswith("orphan ")]
    assert len(orphans) == count, out
    return orphans


def wait_no_zombies(rt, name, timeout_s=10.0):
    """Zombies are reaped on SIGCHLD; allow a bounded moment for PID 1 to run."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = zombies(rt, name)
        if not left or time.monotonic() > deadline:
            return left


def test_orphans_of_exec_are_reaped_and_what_top_shows(runtime):
    """Orphans of `exec` are reaped by reaper as PID 1; a bare process as PID 1 leaves zombies.

    `docker top` hides those zombies (it lists the container's cgroup, which
    an exited process has left); `podman top` shows them (it reads the
    container's /proc), so the README's /proc check is for docker's sake.
    """
    # Negative control: a process that never waits as PID 1 never reaps.
    bare, out = runtime.start(cmd=["/jobs/job.py"], entrypoint="python3")
    out.until("ready")
    orphans = make_orphans(runtime, bare, 3)
    assert sorted(zombies(runtime, bare)) == sorted(orphans)
    # The README's way of finding them:
    listed = runtime("exec", bare, "sh", "-c", "grep -l '^State:.Z' /proc/[0-9]*/status", check=False)[1]
    assert sorted(line.split("/")[2] for line in listed.split()) == sorted(orphans), listed
    top = runtime("top", bare, "-o", "pid,stat,comm")[1]
    shown = sorted(f[0] for f in map(str.split, top.splitlines()[1:]) if len(f) > 1 and f[1].startswith("Z"))
    if runtime.name == "docker":
        assert shown == [] and "defunct" not in top, f"docker top listed a zombie:\n{top}"
    else:
        assert shown == sorted(orphans), f"podman top did not list the zombies:\n{top}"

    name, out = runtime.start(cmd=JOB)
    out.until("ready")
    make_orphans(runtime, name, 3)
    assert wait_no_zombies(runtime, name) == []
    runtime.stop(name, STOP_TIMEOUT_S)
    assert runtime.exit_code(name) == 143


def test_what_exec_leaves_behind_is_stopped_with_the_container(runtime):
    """A process started with `exec -d` (kubectl exec alike) and its escaped daemon.

    Neither is reaper's descendant (the exec'd process's parent is the
    runtime's shim or conmon, outside the namespace).  With the process-tree
    containment (no writable cgroup: this hybrid host) reaper as PID 1 sweeps
    the whole pid namespace: both get TERM and the whole grace, and reaper
    waits for the exec'd process (reaper.namespace pins it by pidfd) instead
    of letting the kernel SIGKILL it with the namespace.  The exec'd process
    traps TERM and takes 1 s to shut down: its `exits` line, and a stop that
    took that second, show it ended of its own accord.  With a cgroup they
    are outside the job's cgroup and die with the namespace when reaper
    exits.  Either way nothing is left and the status is the job's.
    """
    name, out = runtime.start(cmd=JOB)
    out.until("ready")
    info = json.loads(runtime("exec", name, REAPER, "doctor", "--json")[1])
    # The exec'd job writes to the container's log through PID 1's stdout.
    runtime("exec", "-d", name, "sh", "-c",
            "exec python3 /jobs/job.py --trap-term 0 --term-work 1 --daemons 1 >/proc/1/fd/1 2>&1")
    [daemon] = daemons_ready(out, 1)
    exec_main = out.seen[-1].split()[1]         # `ready <pid>`
    took = runtime.stop(name, STOP_TIMEOUT_S)
    lines = out.rest()
    assert runtime.exit_code(name) == 143, lines
    assert took < STOP_TIMEOUT_S - 0.5, f"stop took {took:.2f}s"
    if info["auto_containment"] == "pgroup":
        assert got_term(lines, f"daemon {daemon}"), lines
        assert got_term(lines, f"main {exec_main}"), lines
        assert f"main {exec_main} exits 0" in lines, f"the exec'd process was killed in its shutdown: {lines}"
        assert took >= 1.0, f"stop took {took:.2f}s: reaper did not wait for the exec'd process"


# -- --init: tini / catatonit as PID 1, reaper below it ---------------------------

def test_under_init_reaper_still_collects_everything(runtime):
    """The runtime's init (docker: tini as docker-init; podman: catatonit as
    podman-init) is PID 1 and reaps; reaper below it is a subreaper and stops the job.

    reaper is not PID 1 here, so its grace is the ordinary default: pass a
    --grace below the stop timeout.
    """
    name, out = runtime.start("--init", cmd=[*JOB, "--daemons", "2", "--daemons-ignore-term"],
                              reaper=["--grace", "2s"])
    daemons = daemons_ready(out, 2)
    init = runtime("exec", name, "cat", "/proc/1/cmdline")[1].split("\0")[0]
    assert init.endswith({"docker": "/docker-init", "podman": "/podman-init"}[runtime.name]), (
        f"PID 1 is {init!r}, not the runtime's init")
    make_orphans(runtime, name, 2)
    assert wait_no_zombies(runtime, name) == []      # the init reaps what exec left
    took = runtime.stop(name, STOP_TIMEOUT_S)
    lines = out.rest()
    for pid in daemons:
        assert got_term(lines, f"daemon {pid}"), lines
    assert runtime.exit_code(name) == 143
    assert took < STOP_TIMEOUT_S - 0.5, f"stop took {took:.2f}s"


# -- reaper doctor inside -------------------------------------------------------

def test_doctor_inside_a_container(docker, artifacts):
    code, text = docker.run(cmd=["doctor"], entrypoint=REAPER)
    assert code == 0, text
    code, raw = docker.run(cmd=["doctor", "--json"], entrypoint=REAPER)
    assert code == 0, raw
    info = json.loads(raw)
    assert info["pid1"] is True
    # unshare(CLONE_NEWPID) needs CAP_SYS_ADMIN, which a default container lacks.
    assert info["pid_namespaces"] is False, info
    assert info["auto_containment"] in ("cgroup", "pgroup"), info
    if artifacts:
        with open(os.path.join(artifacts, "doctor-docker.txt"), "w") as f:
            f.write(text)
    code, verbose = docker.run(cmd=["true"], reaper=["-v"])
    assert code == 0, verbose
    assert re.search(r"^reaper: containment: (cgroup|pgroup): ", verbose, re.M), verbose


# -- docker kill -s KILL ----------------------------------------------------------

def host_cgroups(pid):
    """The directories of a host process's cgroups, in every mounted hierarchy."""
    mounts = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ")
            fstype, _, opts = right.split()[:3]
            target = left.split()[4]
            if fstype == "cgroup2":
                mounts[""] = target
            elif fstype == "cgroup":
                ctrls = [o for o in opts.split(",") if o not in ("rw", "ro") and "=" not in o or
                         o.startswith("name=")]
                mounts[",".join(ctrls)] = target
    dirs = []
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if ctrls in mounts:
                dirs.append(os.path.join(mounts[ctrls], path.lstrip("/")))
    return dirs


def host_pids_in(cgroup_dir):
    pids = set()
    for root, _, files in os.walk(cgroup_dir):
        if "cgroup.procs" in files:
            with open(os.path.join(root, "cgroup.procs")) as f:
                pids |= {int(p) for p in f.read().split()}
    return pids


def test_docker_kill_leaves_nothing_on_the_host(docker):
    name, out = docker.start(cmd=[*JOB, "--daemons", "2", "--daemons-ignore-term"])
    daemons_ready(out, 2)
    init = int(docker("inspect", "--format", "{{.State.Pid}}", name)[1])
    dirs = [d for d in host_cgroups(init) if name_in(d, docker, name)]
    assert dirs, f"no cgroup of the container found for pid {init}: {host_cgroups(init)}"
    pids = set().union(*(host_pids_in(d) for d in dirs))
    assert len(pids) >= 4, pids      # reaper, main, two daemons
    docker("kill", "-s", "KILL", name)
    docker("wait", name)
    assert docker.exit_code(name) == 137
    alive = [p for p in pids if os.path.exists(f"/proc/{p}")]
    assert not alive, f"container processes left on the host: {alive}"
    left = [d for d in dirs if os.path.exists(d)]
    assert not left, f"container cgroups left on the host: {left}"


def name_in(path, rt, name):
    cid = rt("inspect", "--format", "{{.Id}}", name)[1].strip()
    return cid in path


def test_the_lane_image_carries_no_compiler(docker):
    code, output = docker.run(cmd=["-c", "command -v gcc cc || echo none"], entrypoint="sh")
    assert output.strip() == "none", output


# -- examples/kubernetes/pod.yaml ---------------------------------------------------

POD_YAML = os.path.join(os.path.dirname(os.path.dirname(HERE)), "examples", "kubernetes", "pod.yaml")


def load_yaml(path):
    """PyYAML from this interpreter, or from Debian's python3 (python3-yaml); None if neither has it."""
    try:
        import yaml
    except ImportError:
        for python in ("/usr/bin/python3", "python3"):
            try:
                proc = subprocess.run([python, "-c", "import json, sys, yaml; "
                                       "print(json.dumps(yaml.safe_load(open(sys.argv[1]))))", path],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30)
            except FileNotFoundError:
                continue
            if proc.returncode == 0:
                return json.loads(proc.stdout)
        return None
    with open(path) as f:
        return yaml.safe_load(f)


def test_the_kubernetes_pod_runs_as_written(runtime):
    """The manifest parses; its grace fits terminationGracePeriodSeconds; its container
    (command, args, security context, memory limit) runs in the lane's image and stops with TERM.

    Run as a container of its own, as kubelet's runtime (containerd, CRI-O)
    would; `podman kube play` would add an infra container from a pause
    image the lane does not build."""
    pod = load_yaml(POD_YAML)
    if pod is None:
        pytest.skip("no PyYAML to parse examples/kubernetes/pod.yaml (apt-get install python3-yaml)")
    assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod"
    spec = pod["spec"]
    [app] = spec["containers"]
    command, args = app["command"], app["args"]
    assert command[:2] == [REAPER, "exec"] and command[-1] == "--", command
    grace = command[command.index("--grace") + 1]
    assert grace.endswith("s") and float(grace[:-1]) < spec["terminationGracePeriodSeconds"], grace
    security, limits = app.get("securityContext", {}), app.get("resources", {}).get("limits", {})
    opts = []
    if security.get("readOnlyRootFilesystem"):
        opts.append("--read-only")
    if security.get("allowPrivilegeEscalation") is False:
        opts += ["--security-opt", "no-new-privileges"]
    if "memory" in limits:
        assert limits["memory"].endswith("Mi"), limits
        opts += ["--memory", limits["memory"][:-2] + "m"]
    name, out = runtime.start(*opts, cmd=command[1:] + args, entrypoint=command[0])
    out.until("serving")
    took = runtime.stop(name, spec["terminationGracePeriodSeconds"])
    out.rest()
    assert runtime.exit_code(name) == 143
    assert took < 10, f"stop took {took:.2f}s"      # well below --grace 20s: the job exits on TERM


def test_the_images_default_command_runs_and_collects_its_daemon(docker):
    """examples/Dockerfile's own CMD: a shell that leaves `sleep 1000` behind and exits 0."""
    t0 = time.monotonic()
    code, output = docker.run(cmd=[])
    assert code == 0, output
    assert "a daemon escaped; reaper will collect it" in output, output
    assert time.monotonic() - t0 < 20, "the escaped sleep was not stopped at once"
