"""The contestants: reaper (both containments) and each alternative, as argv prefixes.

A launcher is whatever goes in front of the job's command line.  Each entry
also records the facts the metrics need to treat it fairly: whether there is a
supervisor process to measure at all (not for `bare`), whether it forwards
SIGUSR1 (GNU timeout does not: USR1 would simply kill it), and how the stop
request is delivered (SIGTERM to the launcher; for `bare`, to the job itself).

Nothing is installed here: a missing binary (tini, dumb-init, catatonit, GNU
timeout) or a missing psutil is reported as skipped with the reason, and the
rest of the bench goes on without it.
"""

import os
import shlex
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))


class Launcher:
    def __init__(self, key, label, prefix, supervisor=True, forwards_usr1=True,
                 subreaper=False, has_grace=False, note=""):
        self.key = key              # stable JSON key
        self.label = label          # what the tables print
        self.prefix = prefix        # function(grace_s) -> argv prefix
        self.supervisor = supervisor
        self.forwards_usr1 = forwards_usr1
        self.subreaper = subreaper
        self.has_grace = has_grace
        self.note = note

    def argv(self, cmd, grace_s):
        return self.prefix(grace_s) + list(cmd)


def default_reaper(python):
    script = os.path.join(os.path.dirname(python), "reaper")
    if os.access(script, os.X_OK):
        return [script]
    return [python, "-m", "reaper"]


def parse_reaper(text, python):
    return shlex.split(text) if text else default_reaper(python)


def interpreter_of(cmd, fallback):
    """The Python that runs reaper (for the `python -c pass` floors of the same run)."""
    exe = shutil.which(cmd[0]) or cmd[0]
    if len(cmd) >= 3 and cmd[1] == "-m":
        return exe
    try:
        with open(exe, "rb") as f:
            first = f.readline(200)
    except OSError:
        return fallback
    if first.startswith(b"#!"):
        words = first[2:].decode(errors="replace").split()
        if words and os.path.basename(words[0]).startswith("python") and os.access(words[0], os.X_OK):
            return words[0]
    return fallback


def _fmt_grace(g):
    return f"{g:g}s"


def build(reaper_cmd, python):
    """Return (launchers that exist here, {key: reason} for those that do not)."""
    found, skipped = [], {}
    pywrap = os.path.join(HERE, "pywrap.py")

    found.append(Launcher("bare", "bare command", lambda g: [], supervisor=False,
                          forwards_usr1=True, note="no supervisor; signals go to the job itself"))
    found.append(Launcher(
        "reaper-cgroup", "reaper exec (cgroup)",
        lambda g: reaper_cmd + ["exec", "--containment", "cgroup", "--grace", _fmt_grace(g), "--"],
        subreaper=True, has_grace=True))
    found.append(Launcher(
        "reaper-pgroup", "reaper exec (pgroup)",
        lambda g: reaper_cmd + ["exec", "--containment", "pgroup", "--grace", _fmt_grace(g), "--"],
        subreaper=True, has_grace=True))

    def binary(key, label, name, args, **kw):
        path = shutil.which(name)
        if path is None:
            skipped[key] = f"{name} not found on PATH (Debian package {name})"
            return
        found.append(Launcher(key, label, lambda g, p=path: [p] + args(g), **kw))

    binary("tini", "tini -s -g", "tini", lambda g: ["-s", "-g", "--"], subreaper=True)
    binary("dumb-init", "dumb-init", "dumb-init", lambda g: ["--"])
    binary("catatonit", "catatonit -g", "catatonit", lambda g: ["-g", "--"], subreaper=True)
    binary("timeout", "timeout -k", "timeout", lambda g: ["-k", _fmt_grace(g), "3600"],
           forwards_usr1=False, has_grace=True,
           note="GNU timeout handles only TERM/INT/HUP/QUIT/ALRM; SIGUSR1 would kill it")

    found.append(Launcher("py-killpg", "python killpg",
                          lambda g: [python, pywrap, "killpg", "--grace", str(g), "--"],
                          has_grace=True))
    probe = subprocess.run([python, "-c", "import psutil"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    if probe.returncode == 0:
        found.append(Launcher("psutil", "psutil tree kill",
                              lambda g: [python, pywrap, "psutil", "--grace", str(g), "--"],
                              has_grace=True))
        found.append(Launcher("psutil-subreaper", "psutil + subreaper",
                              lambda g: [python, pywrap, "psutil-subreaper", "--grace", str(g), "--"],
                              subreaper=True, has_grace=True))
    else:
        for key in ("psutil", "psutil-subreaper"):
            skipped[key] = f"psutil is not importable by {python}"
    return found, skipped


def versions(python, reaper_cmd):
    """One line of version text per tool, for the machine description."""
    out = {}

    def first_line(argv):
        try:
            r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        text = r.stdout.decode(errors="replace").strip().splitlines()
        return text[0] if text else None

    out["python"] = first_line([python, "-c", "import sys; print(sys.version.split()[0])"])
    out["reaper"] = first_line(reaper_cmd + ["--version"])
    # Where reaper's code comes from: an installed copy may differ from the checkout.
    out["reaper_module"] = first_line(
        [python, "-c", "import reaper; print(reaper.__file__)"] if reaper_cmd[1:2] == ["-m"]
        else [python, "-I", "-c", "import reaper; print(reaper.__file__)"])
    for name, argv in (("tini", ["tini", "--version"]), ("dumb-init", ["dumb-init", "--version"]),
                       ("catatonit", ["catatonit", "--version"]), ("timeout", ["timeout", "--version"])):
        if shutil.which(argv[0]):
            out[name] = first_line(argv)
    out["psutil"] = first_line([python, "-c", "import psutil; print(psutil.__version__)"])
    return out
