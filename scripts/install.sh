#!/bin/sh
# Install reaper and what it needs on Debian, into /opt/reaper-venv.
#
# The venv is built from Debian's /usr/bin/python3 under /opt, world-readable,
# so tests can also run reaper as an unprivileged user (setpriv). python-prctl
# has no wheels: it compiles against libcap headers, hence gcc and libcap-dev.
# A regular (not editable) install: pip compiles the bytecode, and no editable
# finder is imported at every interpreter start-up.
# With --test, also the tools the test suite and the benchmark drive.
set -eu
cd "$(dirname "$0")/.."
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
[ -x /opt/reaper-venv/bin/python ] || /usr/bin/python3 -m venv /opt/reaper-venv
/opt/reaper-venv/bin/pip install -q --disable-pip-version-check ".$extra"
echo "reaper installed: /opt/reaper-venv/bin/reaper" >&2
