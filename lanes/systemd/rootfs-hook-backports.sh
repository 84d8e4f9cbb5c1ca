# Run by lanes/rootfs.sh (with rootfs-hook.sh after it) for the systemd lane's
# second image, LANE_SYSTEMD_FROM=bookworm-backports: systemd from
# bookworm-backports (254 when written), for what only systemd >= 254 has
# (DelegateSubgroup=). Most users' distributions ship 254 or later; Debian 12's
# own 252 stays the lane's default image.
set -eu
mirror=$(awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
cat >/etc/apt/sources.list.d/backports.sources <<SOURCES
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports \
    systemd systemd-sysv libpam-systemd dbus-user-session
systemctl --version | head -n 1
