#!/bin/bash
# lanes/rootfs.sh NAME "PKG,PKG,..." [HOOK]
#
# Builds (once) a Debian 12 (bookworm) debootstrap --variant=minbase root
# filesystem with the extra packages, able to reach the package mirrors the
# host reaches: the host's apt sources, /etc/pip.conf, /etc/resolv.conf and
# the extra CA certificates (/usr/local/share/ca-certificates, then
# update-ca-certificates) are copied in. HOOK, optional, is a shell script run
# inside the root (chroot, /bin/sh) after that, for a lane's own setup.
#
# Caches it as $REAPER_LANE_CACHE/NAME-HASH.tar.zst (default
# /var/cache/reaper-lanes), HASH over the sorted package list, this script and
# HOOK, and prints that path on stdout (nothing else goes to stdout).
# Unpack with:  tar --zstd --numeric-owner --xattrs --xattrs-include='*' -xpf TARBALL -C DIR
#
# Safe to run concurrently: one flock per NAME (a second caller waits and then
# reuses the tarball), the tree is built in a temporary directory next to the
# cache and the tarball appears by an atomic rename. Tarballs of NAME with
# another hash are removed once the new one exists.
# Measured (2 cores): ~60-70 s cold for systemd + python3, ~120 MB zstd.
set -euo pipefail

usage() { echo "usage: $0 NAME \"PKG,PKG,...\" [HOOK]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 3 ] || usage
name=$1
pkgs=${2:-}
hook=${3:-}
case $name in ''|*/*|.*) usage ;; esac
[ -z "$hook" ] || [ -r "$hook" ] || { echo "rootfs.sh: cannot read hook $hook" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "rootfs.sh: needs root (debootstrap)" >&2; exit 2; }

cache=${REAPER_LANE_CACHE:-/var/cache/reaper-lanes}
suite=bookworm
base=ca-certificates

# The package list, deduplicated and sorted: the order a lane lists them in
# does not change the image.
pkglist=$(printf '%s,%s\n' "$base" "$pkgs" | tr ', ' '\n\n' | sed '/^$/d' | sort -u | paste -sd, -)
hash=$( { printf '%s\n' "$pkglist"; cat "$0"; [ -z "$hook" ] || cat "$hook"; } | sha256sum | cut -c1-16)
out=$cache/$name-$hash.tar.zst

mkdir -p "$cache"
exec 9>"$cache/$name.lock"
flock -w 1200 9 || { echo "rootfs.sh: timed out waiting for $cache/$name.lock" >&2; exit 1; }
if [ -s "$out" ]; then
    echo "$out"
    exit 0
fi

# Host tools. Other lanes may be in apt at the same time: wait for its lock.
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v zstd >/dev/null || need+=(zstd)
if [ ${#need[@]} -gt 0 ]; then
    apt_get() { DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=600 "$@" >&2; }
    apt_get install -y "${need[@]}" || { apt_get update && apt_get install -y "${need[@]}"; }
fi

# The mirror: the first URI of the host's deb822 sources that is not the
# security archive (that one carries no bookworm suite).
mirror=$(awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}

work=$(mktemp -d "$cache/.build-$name.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
root=$work/root
log=$work/debootstrap.log
echo "rootfs.sh: building $out (debootstrap $suite from $mirror: $pkglist)" >&2
if ! debootstrap --variant=minbase --include="$pkglist" "$suite" "$root" "$mirror" >"$log" 2>&1; then
    echo "rootfs.sh: debootstrap failed; the end of its log:" >&2
    tail -n 30 "$log" >&2
    [ ! -f "$root/debootstrap/debootstrap.log" ] || tail -n 30 "$root/debootstrap/debootstrap.log" >&2
    exit 1
fi

# What makes the mirrors work inside: the host's sources replace the
# one-line sources.list debootstrap wrote (else every entry is listed twice).
rm -f "$root/etc/apt/sources.list"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    mkdir -p "$root$(dirname "$f")"
    cp "$f" "$root$f"
done
[ ! -f /etc/pip.conf ] || cp /etc/pip.conf "$root/etc/pip.conf"
rm -f "$root/etc/resolv.conf"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
if [ -d /usr/local/share/ca-certificates ]; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
chroot "$root" /usr/sbin/update-ca-certificates >/dev/null 2>&1
if [ -n "$hook" ]; then
    if ! chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /bin/sh -s <"$hook" >"$work/hook.log" 2>&1; then
        echo "rootfs.sh: hook $hook failed; the end of its output:" >&2
        tail -n 30 "$work/hook.log" >&2
        exit 1
    fi
fi
# Smaller tarball: the downloaded .debs and the apt lists are not needed.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root/debootstrap"

tar -C "$root" --numeric-owner --xattrs --xattrs-include='*' -cf - . \
    | zstd -q -T0 -3 -o "$work/rootfs.tar.zst"
mv -f "$work/rootfs.tar.zst" "$out"
for old in "$cache/$name"-*.tar.zst; do
    [ "$old" = "$out" ] || rm -f "$old"
done
echo "rootfs.sh: built $out ($(du -h "$out" | cut -f1))" >&2
echo "$out"
