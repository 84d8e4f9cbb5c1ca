"""Run through `docker exec`: print `zombie <pid> <ppid>` for each zombie in the container's /proc.

`docker top` cannot show them: it lists the container's cgroup, and an
exited task leaves its cgroup before it becomes a zombie.
"""
import os

for entry in os.listdir("/proc"):
    if not entry.isdigit():
        continue
    try:
        with open(f"/proc/{entry}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    if fields[0] == "Z":
        print(f"zombie {entry} {fields[1]}")
