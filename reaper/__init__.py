"""reaper: run a command and collect every process it starts.

The package is split by responsibility, each module importable on its own so
that `reaper exec` loads only what it uses:

- cli: argument parsing, the single place that maps errors to exit codes
- containment: picks cgroup or process-tree containment and says why
- cgroup: cgroup v2 discovery, the job's cgroup, cgroup.kill / freeze
- tree: the fallback (subreaper + stop-the-tree sweep, via psutil)
- spawn: fork, join the cgroup, set up the session, exec
- supervisor: the event loop, reaping, signal forwarding, the stop ladder
- terminal: foreground process group and job control
- pidns: --pidns, a pid namespace whose init dies with reaper
- doctor: what this machine offers, for humans and for --json
"""

__version__ = "0.1.0"
