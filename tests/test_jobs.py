"""Named jobs from another shell: the registry, ls, ps, ports, stats, kill, gc.

Every job is a real tree (escaped daemons, TERM-ignoring, port-holding) started
by `reaper exec -v --name NAME`; tests wait for reaper's own `registered as`
line on stderr, so no test polls the registry.  Each test has a registry of its
own (the sandbox sets REAPER_REGISTRY), so nothing here sees other jobs on the
machine.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from conftest import NOBODY, Lines, helper, require

pytestmark = pytest.mark.timeout(60)


def start_job(sandbox, name, *job, mode="cgroup", extra=(), env=None, argv_prefix=()):
    """`reaper exec -v --name NAME -- job...`; returns (proc, job stdout Lines), once registered."""
    args = ["exec", "-v", "--containment", mode, "--grace", "300ms", *extra]
    if name is not None:
        args += ["--name", name]
    if argv_prefix:
        proc = sandbox.spawn([*argv_prefix, sys.executable, "-m", "reaper", *args, "--", *job],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    else:
        proc = sandbox.reaper(*args, "--", *job, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = Lines(proc.stderr)
    line = err.until("reaper: registered as ")
    proc.registered_name = line.split("'")[1]
    proc.err = err
    return proc, Lines(proc.stdout)


def escaped_job(sandbox, name, mode="cgroup", **kw):
    proc, out = start_job(sandbox, name, *helper("escape.py"), "2", "--ignore-term", "--stay", mode=mode, **kw)
    daemons = [int(out.until("daemon ").split()[1]) for _ in range(2)]
    main = int(out.until("ready ").split()[1])
    return proc, main, daemons


def reaper_cmd(sandbox, *args, env=None, timeout=30):
    proc = sandbox.reaper(*args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


def ls_json(sandbox, *extra, env=None):
    code, out, err = reaper_cmd(sandbox, "ls", "--json", *extra, env=env)
    assert code == 0, err
    return {j["name"]: j for j in json.loads(out)}


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


# -- registry and ls ----------------------------------------------------------------

def test_ls_shows_a_named_job_with_its_processes_and_escapees(sandbox, mode):
    proc, main, daemons = escaped_job(sandbox, "web", mode=mode)
    job = ls_json(sandbox)["web"]
    assert job["supervisor_pid"] == proc.pid
    assert job["main_pid"] == main
    assert job["containment"] == mode
    assert job["processes"] == 3 and job["escaped"] == 2
    assert job["uid"] == os.geteuid() and job["alive"]
    assert job["memory_bytes"] > 0 and job["cpu_s"] >= 0
    code, out, _ = reaper_cmd(sandbox, "ls")
    assert code == 0 and "web" in out.splitlines()[1].split()
    stop(proc)
    sandbox.assert_empty()
    assert ls_json(sandbox) == {}
    assert os.listdir(os.path.join(sandbox.registry, str(os.geteuid()))) == []


def test_a_taken_name_fails_with_125_before_the_job_starts(sandbox):
    proc, _, _ = escaped_job(sandbox, "web")
    marker = sandbox.tmp / "started"
    code, out, err = reaper_cmd(sandbox, "exec", "--name", "web", "--", "touch", str(marker))
    assert code == 125
    assert err.count("\n") == 1 and err.startswith("reaper: --name web: a running job already has this name")
    assert not marker.exists()
    stop(proc)
    sandbox.assert_empty()


def test_two_jobs_racing_for_one_name_get_it_once(sandbox):
    procs = [sandbox.reaper("exec", "--name", "race", "--", *helper("signals.py"), "--stop-exit", "0",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    # The winner's job prints `ready`; a loser's stdout ends when it exits.
    losers = [p for p in procs if Lines(p.stdout).next(30) is None]
    assert len(losers) == 3, [p.poll() for p in procs]
    for p in losers:
        p.wait(timeout=30)
    for p in losers:
        assert p.returncode == 125 and b"a running job already has this name" in p.stderr.read()
    winner = [p for p in procs if p not in losers][0]
    code, _, err = reaper_cmd(sandbox, "kill", "race")
    assert code == 0, err
    assert winner.wait(timeout=10) == 0
    sandbox.assert_empty()


def test_unnamed_jobs_get_unique_names(sandbox):
    first, _ = start_job(sandbox, None, *helper("signals.py"), "--stop-exit", "0")
    second, _ = start_job(sandbox, None, *helper("signals.py"), "--stop-exit", "0")
    base = os.path.basename(sys.executable)      # the default name is the command's base name
    assert (first.registered_name, second.registered_name) == (base, f"{base}-2")
    assert set(ls_json(sandbox)) == {base, f"{base}-2"}
    stop(first)
    stop(second)


def test_a_name_is_free_again_once_its_job_is_gone(sandbox):
    proc, _, _ = escaped_job(sandbox, "again")
    stop(proc)
    code, _, err = reaper_cmd(sandbox, "exec", "--name", "again", "--", "true")
    assert code == 0, err


# -- ps -------------------------------------------------------------------------

def test_ps_marks_escaped_processes_and_orphans(sandbox, mode):
    proc, main, daemons = escaped_job(sandbox, "tree", mode=mode)
    code, out, err = reaper_cmd(sandbox, "ps", "tree", "--json")
    assert code == 0, err
    procs = {p["pid"]: p for p in json.loads(out)["processes"]}
    assert set(procs) == {main, *daemons}
    assert procs[main]["main"] and not procs[main]["escaped_session"] and not procs[main]["orphan"]
    for d in daemons:
        # double fork + setsid: a session of its own, and its parent (the middle
        # process) died, so it was re-parented to reaper, the subreaper.
        assert procs[d]["escaped_session"] and procs[d]["orphan"] and procs[d]["ppid"] == proc.pid
    code, out, _ = reaper_cmd(sandbox, "ps", "tree")
    assert code == 0
    text = "\n".join(out.splitlines()[2:])
    assert text.count("left-session,orphan") == 2 and "main" in text
    stop(proc)
    sandbox.assert_empty()


# -- ports ------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["sock_diag", "proc"])
def test_ports_finds_the_port_a_grandchild_holds(sandbox, mode, source):
    proc, out = start_job(sandbox, "srv", *helper("listener.py"), mode=mode)
    words = out.until("port ").split()
    port, holder = int(words[1]), int(words[3])
    env = dict(sandbox.env, REAPER_NO_SOCK_DIAG="1") if source == "proc" else None
    code, text, err = reaper_cmd(sandbox, "ports", "srv", "--json", env=env)
    assert code == 0, err
    doc = json.loads(text)
    listening = [s for s in doc["sockets"] if s["state"] == "LISTEN" and s["proto"] == "tcp"]
    assert [(s["local"], s["pids"]) for s in listening] == [(f"127.0.0.1:{port}", [holder])]
    if source == "sock_diag" and mode == "cgroup":
        assert "INET_DIAG_CGROUP_ID" in doc["source"]
    elif source == "proc":
        assert doc["source"].startswith("/proc")
    code, text, _ = reaper_cmd(sandbox, "ports", "srv")
    assert f"127.0.0.1:{port}" in text and "LISTEN" in text
    stop(proc)
    sandbox.assert_empty()


def test_ports_lists_unix_sockets_and_connections(sandbox):
    path = str(sandbox.tmp / "s.sock")
    script = ("import socket,sys,signal\n"
              "u=socket.socket(socket.AF_UNIX); u.bind(sys.argv[1]); u.listen()\n"
              "l=socket.socket(); l.bind(('127.0.0.1',0)); l.listen()\n"
              "c=socket.create_connection(l.getsockname()); a,_=l.accept()\n"
              "print('ready', l.getsockname()[1], flush=True)\n"
              "signal.pause()\n")
    proc, out = start_job(sandbox, "sockets", sys.executable, "-c", script, path)
    port = int(out.until("ready ").split()[1])
    code, text, err = reaper_cmd(sandbox, "ports", "sockets", "--json")
    assert code == 0, err
    socks = json.loads(text)["sockets"]
    assert any(s["proto"] == "unix" and s["local"] == path and s["state"] == "LISTEN" for s in socks)
    established = [s for s in socks if s["proto"] == "tcp" and s["state"] == "ESTABLISHED"]
    assert len(established) == 2 and any(s["local"] == f"127.0.0.1:{port}" for s in established)
    stop(proc)
    sandbox.assert_empty()


# -- stats ------------------------------------------------------------------------

def test_stats_of_a_running_job(sandbox, mode):
    proc, _, _ = escaped_job(sandbox, "busy", mode=mode)
    code, text, err = reaper_cmd(sandbox, "stats", "busy", "--json")
    assert code == 0, err
    doc = json.loads(text)
    assert doc["processes"] == 3 and doc["memory_bytes"] > 0
    assert doc["cpu_source"] == ("cgroup" if mode == "cgroup" else "/proc (live processes only)")
    code, text, _ = reaper_cmd(sandbox, "stats", "busy")
    assert code == 0 and "processes:" in text
    stop(proc)


# -- kill -------------------------------------------------------------------------

def test_kill_stops_a_term_ignoring_tree_and_returns_when_nothing_is_left(sandbox, mode):
    proc, main, daemons = escaped_job(sandbox, "stubborn", mode=mode)
    watched = [psutil.Process(p) for p in (main, *daemons)]
    started = time.monotonic()
    code, out, err = reaper_cmd(sandbox, "kill", "stubborn", "--grace", "500ms")
    elapsed = time.monotonic() - started
    assert code == 0, err
    assert err == ""
    # returned only once the job was gone: nothing of it is alive right now
    assert not [p for p in watched if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert proc.wait(timeout=10) == 143      # main died of the TERM of the ladder
    assert elapsed < 30
    sandbox.assert_empty()


def test_kill_without_a_control_socket_signals_the_pinned_supervisor(sandbox):
    env = dict(sandbox.env, REAPER_NO_CONTROL_SOCKET="1")
    proc, main, daemons = escaped_job(sandbox, "nosock", env=env)
    code, _, err = reaper_cmd(sandbox, "kill", "nosock")
    assert code == 0, err
    # The supervisor's own ladder: the job died of the TERM it forwarded, so reaper dies of it too.
    assert proc.wait(timeout=10) == -signal.SIGTERM
    sandbox.assert_empty()


def test_kill_passes_the_signal_and_the_grace_to_the_ladder(sandbox):
    proc, out = start_job(sandbox, "sig", *helper("signals.py"))
    out.until("ready ")
    code, _, err = reaper_cmd(sandbox, "kill", "sig", "--signal", "USR1", "--grace", "200ms")
    assert code == 0, err
    assert out.until("got ") == "got USR1"
    assert proc.wait(timeout=10) == 137      # USR1 is handled, so SIGKILL after the grace
    sandbox.assert_empty()


def test_kill_stops_a_job_in_its_own_pid_namespace(sandbox):
    proc, _, _ = escaped_job(sandbox, "ns", extra=("--pidns",))
    code, _, err = reaper_cmd(sandbox, "kill", "ns", "--grace", "300ms")
    assert code == 0, err
    assert proc.wait(timeout=10) in (137, 143)
    sandbox.assert_empty()


@pytest.mark.parametrize("command", ["ls", "ps", "ports", "stats", "kill"])
def test_each_job_command_has_its_own_help(sandbox, command):
    code, out, err = reaper_cmd(sandbox, command, "--help")
    assert code == 0 and err == "" and out.startswith(f"usage: reaper {command}")


@pytest.mark.parametrize("args, message", [
    (["kill", "nosuch"], "reaper: no job named 'nosuch'"),
    (["ps", "nosuch"], "reaper: no job named 'nosuch'"),
    (["ports", "nosuch", "--json"], "reaper: no job named 'nosuch'"),
    (["stats", "nosuch"], "reaper: no job named 'nosuch'"),
])
def test_unknown_job_names_exit_3(sandbox, args, message):
    code, out, err = reaper_cmd(sandbox, *args)
    assert code == 3 and out == ""
    assert err.startswith(message) and err.count("\n") == 1


@pytest.mark.parametrize("args", [["kill"], ["kill", "a", "b"], ["kill", "a", "--signal", "NOPE"],
                                  ["kill", "a", "--grace", "soon"], ["ls", "x"], ["ps", "--bogus", "a"]])
def test_bad_usage_exits_125(sandbox, args):
    code, _, err = reaper_cmd(sandbox, *args)
    assert code == 125 and err.startswith("reaper: ") and err.count("\n") == 1


# -- a supervisor that dies -------------------------------------------------------

def test_supervisor_sigkilled_between_ls_and_kill(sandbox):
    proc, main, daemons = escaped_job(sandbox, "doomed")
    assert ls_json(sandbox)["doomed"]["alive"]
    proc.kill()
    proc.wait(timeout=10)
    code, _, err = reaper_cmd(sandbox, "kill", "doomed")
    assert code == 3 and "its supervisor has exited" in err
    stale = ls_json(sandbox, "--all")["doomed"]
    assert not stale["alive"] and "exited" in stale["stale"]
    # the escaped daemons are still there (reaper was SIGKILLed) until gc
    assert all(psutil.pid_exists(d) for d in daemons)
    other = os.path.join(sandbox.path, "other-session")
    os.mkdir(other)
    try:
        # `reaper gc` from another session: another cgroup, same registry
        gc = sandbox.spawn([sys.executable, "-m", "reaper", "gc", "-v"],
                           preexec=lambda: open(os.path.join(other, "cgroup.procs"), "w").write("0"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = gc.communicate(timeout=30)
        assert gc.returncode == 0, err
        assert out.decode().startswith(f"removed {sandbox.path}/reaper.{proc.pid}.doomed")
        assert b"removed stale registry entry" in err
    finally:
        os.rmdir(other)
    psutil.wait_procs([psutil.Process(d) for d in daemons if psutil.pid_exists(d)], timeout=10)
    sandbox.assert_empty()
    assert ls_json(sandbox, "--all") == {}


def test_a_forged_entry_is_never_trusted(sandbox):
    """An entry naming a live process with the right start time, but whose lock that
    process does not hold, is stale: not listed, not killed."""
    victim = sandbox.spawn(["sleep", "60"])
    reg = os.path.join(sandbox.registry, str(os.geteuid()))
    os.mkdir(reg, 0o700)
    with open(f"/proc/{victim.pid}/stat") as f:
        starttime = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    entry = {"version": 1, "name": "fake", "uid": 0, "pid": victim.pid, "starttime": starttime,
             "boot_id": boot, "pidns": os.stat("/proc/self/ns/pid").st_ino, "started": time.time(),
             "main_pid": victim.pid, "containment": "pgroup", "argv": ["sleep"], "cgroup": None,
             "ctl": None}
    with open(os.path.join(reg, "fake.json"), "w") as f:
        json.dump(entry, f)
    lock = os.open(os.path.join(reg, "fake.lock"), os.O_CREAT | os.O_RDWR, 0o600)
    import fcntl
    fcntl.flock(lock, fcntl.LOCK_EX)        # held by the forger (this test), not by the "supervisor"
    try:
        assert ls_json(sandbox) == {}
        assert ls_json(sandbox, "--all")["fake"]["stale"] == "its supervisor does not hold the name lock"
        code, _, err = reaper_cmd(sandbox, "kill", "fake")
        assert code == 3
        code, _, _ = reaper_cmd(sandbox, "gc")
        assert code == 0
        assert victim.poll() is None, "a forged entry got a process killed"
        assert os.path.exists(os.path.join(reg, "fake.json")), "gc removed an entry it cannot judge"
    finally:
        os.close(lock)
        victim.kill()
        victim.wait()


def test_garbage_in_the_registry_is_reported_and_ignored(sandbox):
    proc, _, _ = escaped_job(sandbox, "good")
    reg = os.path.join(sandbox.registry, str(os.geteuid()))
    with open(os.path.join(reg, "bad.json"), "w") as f:
        f.write("{not json")
    os.symlink("/etc/passwd", os.path.join(reg, "link.json"))
    code, out, err = reaper_cmd(sandbox, "ls", "--json")
    assert code == 0
    assert [j["name"] for j in json.loads(out)] == ["good"]
    assert "bad.json: not a valid entry" in err and "link.json: not a valid entry" in err
    stop(proc)


# -- a registry directory that is not right ----------------------------------------

def _registry_dir(sandbox):
    return os.path.join(sandbox.registry, str(os.geteuid()))


def test_registry_symlink_is_refused(sandbox):
    target = sandbox.tmp / "elsewhere"
    target.mkdir(mode=0o700)
    os.symlink(target, _registry_dir(sandbox))
    code, _, err = reaper_cmd(sandbox, "exec", "--name", "x", "--", "true")
    assert code == 125 and "is not a directory (a symlink?)" in err and err.count("\n") == 1
    code, out, err = reaper_cmd(sandbox, "exec", "--", "true")
    assert code == 0 and err.startswith("reaper: warning: running unregistered")
    code, _, err = reaper_cmd(sandbox, "ls")
    assert code == 125 and "symlink" in err
    assert os.listdir(target) == []


def test_registry_owned_by_someone_else_is_refused(sandbox):
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    os.mkdir(_registry_dir(sandbox), 0o700)
    os.chown(_registry_dir(sandbox), 65534, 65534)
    code, _, err = reaper_cmd(sandbox, "exec", "--name", "x", "--", "true")
    assert code == 125 and "is owned by uid 65534" in err


def test_registry_with_loose_permissions_is_refused(sandbox):
    os.mkdir(_registry_dir(sandbox))
    os.chmod(_registry_dir(sandbox), 0o777)
    code, _, err = reaper_cmd(sandbox, "exec", "--name", "x", "--", "true")
    assert code == 125 and "must be 0700" in err


def test_missing_registry_is_created_private(sandbox):
    code, _, err = reaper_cmd(sandbox, "exec", "--name", "x", "--", "true")
    assert code == 0, err
    st = os.stat(_registry_dir(sandbox))
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.geteuid()


def test_registry_whose_parent_is_missing_fails_named_jobs(sandbox):
    env = dict(sandbox.env, REAPER_REGISTRY=str(sandbox.tmp / "no" / "such"))
    code, _, err = reaper_cmd(sandbox, "exec", "--name", "x", "--", "true", env=env)
    assert code == 125 and "its parent directory does not exist" in err
    code, _, err = reaper_cmd(sandbox, "ls", env=env)
    assert code == 0


def test_full_or_read_only_registry(sandbox, world):
    """As nobody (root ignores permissions): a registry it cannot write to."""
    reg = os.path.join(sandbox.registry, "65534")
    os.mkdir(reg, 0o500)
    os.chown(reg, 65534, 65534)
    env = dict(sandbox.env, PYTHONPATH=world, HOME="/")
    proc = sandbox.spawn(NOBODY + [sys.executable, "-m", "reaper", "exec", "--name", "ro", "--", "true"],
                         env=env, cwd=world, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 125 and b"--name ro: cannot register the job" in err, err


def test_a_full_registry_fails_a_named_job_before_it_starts(sandbox):
    """The registry on a full 4 KiB tmpfs, in a private mount namespace (gone with it)."""
    require("unshare", "--mount", "--propagation", "private", "true")
    base = sandbox.tmp / "full"
    base.mkdir()
    fill = ('mount -t tmpfs -o size=4k tmpfs "$0" && mkdir -m 0700 "$0/0" && '
            '{ head -c 1M /dev/zero > "$0/0/filler" 2>/dev/null; true; } && exec "$@"')
    env = dict(sandbox.env, REAPER_REGISTRY=str(base))
    marker = sandbox.tmp / "started"

    def run(*args):
        proc = sandbox.spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c", fill, str(base),
                              sys.executable, "-m", "reaper", "exec", *args, "--", "touch", str(marker)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=30)
        return proc.returncode, err.decode()

    code, err = run("--name", "full")
    assert code == 125 and err.count("\n") == 1, err
    assert "--name full: cannot register the job: cannot write to registry" in err
    assert "No space left on device" in err
    assert not marker.exists()
    code, err = run()
    assert code == 0 and err.startswith("reaper: warning: running unregistered") and marker.exists()
    sandbox.assert_empty()


# -- users ------------------------------------------------------------------------

def test_users_see_and_stop_only_their_own_jobs_and_root_sees_all(sandbox, world):
    env = dict(sandbox.env, PYTHONPATH=world, HOME="/")
    env.pop("XDG_RUNTIME_DIR", None)
    theirs, out = start_job(sandbox, "theirs", sys.executable, os.path.join(world, "helpers", "signals.py"),
                            mode="pgroup", env=env, argv_prefix=NOBODY)
    out.until("ready ")
    mine, _, _ = escaped_job(sandbox, "mine")

    def as_nobody(*args):
        p = sandbox.spawn(NOBODY + [sys.executable, "-m", "reaper", *args], env=env, cwd=world,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        o, e = p.communicate(timeout=30)
        return p.returncode, o.decode(), e.decode()

    code, text, err = as_nobody("ls", "--json")
    assert code == 0, err
    assert [j["name"] for j in json.loads(text)] == ["theirs"]
    code, _, err = as_nobody("kill", "mine")
    assert code == 3 and "among the jobs of uid 65534" in err
    assert mine.poll() is None
    everyone = ls_json(sandbox)
    assert set(everyone) == {"theirs", "mine"} and everyone["theirs"]["uid"] == 65534
    code, _, err = reaper_cmd(sandbox, "kill", "theirs", "--grace", "300ms")    # root may
    assert code == 0, err
    assert theirs.wait(timeout=10) == 137     # signals.py survives TERM: killed after the grace
    stop(mine)
    sandbox.assert_empty()


def test_the_control_socket_ignores_other_users(sandbox, world):
    """A datagram from another uid is dropped (SCM_CREDENTIALS): abstract sockets
    have no file permissions, so anyone in the network namespace can send one."""
    proc, out = start_job(sandbox, "guarded", *helper("signals.py"))
    out.until("ready ")
    with open(os.path.join(sandbox.registry, "0", "guarded.json")) as f:
        ctl = json.load(f)["ctl"]
    assert ctl and not [n for n in os.listdir(os.path.join(sandbox.registry, "0")) if "ctl" in n]
    sender = sandbox.spawn(NOBODY + [sys.executable, "-c",
                                     "import socket,sys; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM);"
                                     "s.sendto(b'stop 9 0', b'\\0' + sys.argv[1].encode()); print('sent', flush=True)",
                                     ctl], stdout=subprocess.PIPE)
    assert sender.communicate(timeout=30)[0] == b"sent\n"
    # A request of our own right after: the supervisor handles datagrams in order,
    # so once USR1 arrives the forged SIGKILL request has been seen and dropped.
    code, _, err = reaper_cmd(sandbox, "kill", "guarded", "--signal", "USR1", "--grace", "200ms")
    assert code == 0, err
    assert out.until("got ") == "got USR1"
    assert proc.wait(timeout=10) == 137
    sandbox.assert_empty()
