"""Run through `docker exec`: leave COUNT orphans that exit, for the container's PID 1 to reap.

Each orphan's parent exits at once; the orphan then re-parents to the pid
namespace's init (the runtime's shim outside the namespace is not eligible),
and its exit leaves a zombie until that init reaps it.  Prints `orphan <pid>`
for each and returns only once every orphan has exited (pipe EOF).
usage: orphans.py COUNT
"""
import os
import sys

for _ in range(int(sys.argv[1])):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        orphan = os.fork()
        if orphan == 0:
            os.close(r)
            os._exit(0)     # closes w: the reader sees EOF once the orphan is gone
        os.write(1, f"orphan {orphan}\n".encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    os.read(r, 1)
    os.close(r)
