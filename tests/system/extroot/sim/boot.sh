#!/bin/sh
# Test harness, not a router tool: "boots" one simulated OpenWrt router.
# Runs as PID 1 of a fresh PID and mount namespace (started by conftest.py with
# `unshare --mount --pid --fork --kill-child`), so every mount below disappears and
# every process dies when the test kills unshare by its PID.
#
# It does what OpenWrt's preinit/mount_root does on a device with an internal
# rootfs_data: mount rootfs_data, stack an overlayfs (lowerdir = the read-only
# rom, upperdir = rootfs_data/upper) as /, move rootfs_data to /overlay, then start
# the router's SSH server (dropbear) chrooted into that root.
#
# usage: boot.sh ROM ROOTFS_DATA_DEV STATE_DIR ADDRESS PORT
set -eu
rom=$1 flash=$2 state=$3 addr=$4 port=$5
root=$state/root
mkdir -p "$state/flash" "$root"
mount --make-rprivate /
mount -t ext4 "$flash" "$state/flash"
mkdir -p "$state/flash/upper" "$state/flash/work"
mount -t overlay -o "lowerdir=$rom,upperdir=$state/flash/upper,workdir=$state/flash/work" \
    overlayfs:/overlay "$root"
mount --move "$state/flash" "$root/overlay"
mount --bind "$rom" "$root/rom"
mount -o remount,bind,ro "$root/rom"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
exec chroot "$root" /usr/sbin/dropbear -F -E -s -m -p "$addr:$port" \
    -r /etc/dropbear/dropbear_ed25519_host_key -P /tmp/dropbear.pid
