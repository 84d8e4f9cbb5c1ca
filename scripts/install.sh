#!/bin/sh
# Install reaper and what it needs on Debian, into /opt/reaper-venv, with
# `reaper` on PATH (/usr/local/bin/reaper -> /opt/reaper-venv/bin/reaper).
#
# The venv is built from Debian's /usr/bin/python3 under /opt, world-readable,
# so tests can also run reaper as an unprivileged user (setpriv). python-prctl
# has no wheels and reaper has a small C extension (reaper/_linux.c): both
# compile against the Python headers (python3-dev), python-prctl also against
# libcap's (libcap-dev); hence gcc.  --use-pep517 builds python-prctl as a
# wheel (no "legacy setup.py install" deprecation warning; measured no slower).
# A regular (not editable) install: pip compiles the bytecode, and no editable
# finder is imported at every interpreter start-up.
# The launcher then gets `-IS` on its first line (no site; see scripts/reaper).
# With --test, also the tools the test suite and the benchmark drive.
# REAPER_VENV and REAPER_BINDIR move the venv and the link (the tests use them).
set -eu
cd "$(dirname "$0")/.."
venv="${REAPER_VENV:-/opt/reaper-venv}"
bindir="${REAPER_BINDIR:-/usr/local/bin}"
packages="python3-venv python3-dev gcc libcap-dev util-linux procps"
extra=""
if [ "${1:-}" = "--test" ]; then
    packages="$packages tmux tini dumb-init catatonit hyperfine"
    extra="[test]"
fi
if ! dpkg -s $packages >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null
fi
# Say which package is missing, rather than letting gcc fail on an #include.
include="$(/usr/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
if [ ! -f "$include/Python.h" ]; then
    echo "install.sh: $include/Python.h is missing: apt-get install python3-dev" >&2
    exit 1
fi
if [ ! -f /usr/include/sys/capability.h ]; then
    echo "install.sh: /usr/include/sys/capability.h is missing: apt-get install libcap-dev" >&2
    exit 1
fi
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
pip="$venv/bin/pip"
# Before the distribution was renamed process-reaper it was installed as
# "reaper"; two distributions must not own the same files.
if "$pip" show -q reaper >/dev/null 2>&1 && ! "$pip" show -q process-reaper >/dev/null 2>&1; then
    "$pip" uninstall -q -y reaper
fi
"$pip" install -q --disable-pip-version-check --use-pep517 ".$extra"
sed -i "1s|^#!.*|#!$venv/bin/python3 -IS|" "$venv/bin/reaper"
# The container entrypoint (scripts/reaper-entrypoint.c: no lost stop signal
# while Python starts as PID 1), static where libc.a is (no dynamic loader
# before main), else dynamic.
entry="$venv/bin/reaper-entrypoint"
gcc -O2 -Wall -s -static -DVENV="\"$venv\"" -o "$entry" scripts/reaper-entrypoint.c 2>/dev/null \
    || gcc -O2 -Wall -s -DVENV="\"$venv\"" -o "$entry" scripts/reaper-entrypoint.c
mkdir -p "$bindir"
ln -sfn "$venv/bin/reaper" "$bindir/reaper"
echo "reaper installed: $venv/bin/reaper, linked from $bindir/reaper" >&2
