"""A hot-reloader: run CMD; when a file under DIR changes, stop the whole job (escaped
daemons too) and start it again once every TCP port the old run listened on is free.

    python examples/reload.py DIR -- CMD [ARG...]

DIR is polled every 0.2 s (stdlib only; inotify would merely save the polling).
"""
import os, socket, sys, time
import reaper

def snapshot(top):
    return sorted((os.path.join(d, f), os.lstat(os.path.join(d, f)).st_mtime_ns)
                  for d, _, files in os.walk(top) for f in files if os.path.lexists(os.path.join(d, f)))

def wait_free(port, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                return s.bind(("", port))
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit(f"reload: port {port} is still in use")
        time.sleep(0.05)

top, argv = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
seen, ports = snapshot(top), set()
while True:
    with reaper.Job(argv, grace=2) as job:      # leaving the block collects the whole job
        print(f"reload: started pid {job.pid}", flush=True)
        while snapshot(top) == seen and job.result is None:
            now = {int(p["local"].rsplit(":", 1)[1]) for p in job.ports() if p["state"] == "LISTEN"}
            if not now <= ports:
                ports |= now
                print(f"reload: listening on {sorted(ports)}", flush=True)
            time.sleep(0.2)
    print(f"reload: stopped, status {job.result.returncode}", flush=True)
    while snapshot(top) == seen:                # it ended by itself: wait for a change
        time.sleep(0.2)
    seen = snapshot(top)
    for port in sorted(ports):
        wait_free(port)
    print(f"reload: ports {sorted(ports)} free", flush=True)
    ports = set()
