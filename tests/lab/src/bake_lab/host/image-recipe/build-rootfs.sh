#!/bin/sh
# Builds the lab's Debian 12 base root file system into DIR (the recipe: its hash keys the cache).
set -eu
dest=$1
here=$(cd "$(dirname "$0")" && pwd)
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,ca-certificates,curl,gzip \
  bookworm "$dest" http://deb.debian.org/debian
# Same suites as Debian's own cloud images (security through the same mirror host).
cat > "$dest/etc/apt/sources.list" <<'SRC'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SRC
# Instances fetch packages through the lab's caching proxy (beside the metadata service).
echo 'Acquire::http::Proxy "http://169.254.169.254:3142";' > "$dest/etc/apt/apt.conf.d/00lab-proxy"
install -m 0755 "$here/lab-init" "$dest/usr/local/sbin/lab-init"
install -m 0644 "$here/lab-init.service" "$dest/etc/systemd/system/lab-init.service"
ln -sf /etc/systemd/system/lab-init.service "$dest/etc/systemd/system/multi-user.target.wants/lab-init.service"
# The lab configures each instance's network from outside; nothing inside may fight over it.
rm -f "$dest/etc/hostname"
: > "$dest/etc/machine-id"
# Keep baked images small: no package lists or downloaded debs in the base image.
chroot "$dest" apt-get clean
rm -rf "$dest/var/lib/apt/lists/"*
