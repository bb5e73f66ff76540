#!/bin/sh
# Test harness, not a router tool: "boots" one simulated OpenWrt router, and boots it
# again each time the router runs `reboot`. SUBSTITUTE for the router's init (procd):
# busybox's own `reboot` applet asks PID 1 to reboot with SIGTERM, and this script,
# being PID 1 of the router's namespace, answers by stopping every process,
# unmounting the root and booting again (which resets /tmp and re-reads fstab).
# Runs as PID 1 of a fresh PID and mount namespace (started by conftest.py with
# `unshare --mount --pid --fork --kill-child`), so every mount below disappears and
# every process dies when the test kills unshare by its PID.
#
# Each boot does what OpenWrt's preinit/mount_root does on a device with an internal
# rootfs_data: mount rootfs_data; if its fstab enables extroot for the USB stick
# (sim/extroot-preinit decides, standing in for `block extroot`), mount the stick and
# use it as the overlay, with rootfs_data at /rwm; stack an overlayfs (lowerdir = the
# read-only rom, upperdir = OVERLAY/upper) as /, move the overlay to /overlay, then
# start the router's SSH server (dropbear) chrooted into that root.
#
# usage: boot.sh ROM ROOTFS_DATA_DEV STATE_DIR ADDRESS PORT USB_DEV
set -eu
rom=$1 flash=$2 state=$3 addr=$4 port=$5 usb=$6
sim=$(dirname "$0")
root=$state/root

boot() {
    mkdir -p "$state/flash" "$state/usb" "$root"
    mount -t ext4 "$flash" "$state/flash"
    overlay=$state/flash
    if sh "$sim/extroot-preinit" "$state/flash/upper/etc/config/fstab" "$usb"; then
        # mounted from inside the rom so that /proc/mounts names it /dev/sda, as the router does
        chroot "$rom" /bin/mount -t ext4 /dev/sda /mnt
        mount --move "$rom/mnt" "$state/usb"
        overlay=$state/usb
    fi
    mkdir -p "$overlay/upper" "$overlay/work"
    mount -t overlay -o "lowerdir=$rom,upperdir=$overlay/upper,workdir=$overlay/work" \
        overlayfs:/overlay "$root"
    mount --move "$overlay" "$root/overlay"
    if [ "$overlay" = "$state/usb" ]; then
        mount --move "$state/flash" "$root/rwm"
    fi
    mount --bind "$rom" "$root/rom"
    mount -o remount,bind,ro "$root/rom"
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
}

shutdown() {
    kill -KILL -1 2>/dev/null || true   # as PID 1: every other process of the namespace
    wait || true
    for _try in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
        umount -R "$root" 2>/dev/null && return 0
        sleep 0.2
    done
    echo "boot.sh: cannot unmount $root for the reboot" >&2
    exit 1
}

mount --make-rprivate /
rebooting=0
trap 'rebooting=1' TERM   # what busybox's reboot applet sends to PID 1
while :; do
    boot
    rebooting=0
    chroot "$root" /usr/sbin/dropbear -F -E -s -m -p "$addr:$port" \
        -r /etc/dropbear/dropbear_ed25519_host_key -P /tmp/dropbear.pid &
    wait $! || true
    [ "$rebooting" = 1 ] || exit 1   # dropbear ended without a reboot request
    echo "boot.sh: rebooting"
    shutdown
done
