# Run by lanes/rootfs.sh inside the systemd lane's root filesystem (chroot, /bin/sh).
# An unprivileged user for the suite's user-manager runs, and /opt/reaper-venv
# with reaper's dependencies already in it, so that `sh scripts/install.sh --test`
# inside the container only builds reaper itself (it still runs in full: apt
# finds its packages installed, pip finds the dependencies satisfied).
set -eu
useradd --create-home --uid 1000 --shell /bin/bash lane
/usr/bin/python3 -m venv /opt/reaper-venv
/opt/reaper-venv/bin/pip install -q --disable-pip-version-check \
    "setuptools>=61" wheel "python-prctl>=1.8" "psutil>=5.9" \
    "pytest>=7" "pytest-timeout>=2" "pyroute2>=0.7" jeepney
/opt/reaper-venv/bin/python -c 'import prctl, psutil, pytest, pyroute2'
