#!/usr/bin/python
# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: extroot
short_description: Move an OpenWrt router's overlay (extroot) onto a USB stick or disk
version_added: 0.1.0
description:
  - Configures OpenWrt extroot so that the router's writable layer (the overlayfs
    upperdir, normally on the small internal rootfs_data partition) lives on a bigger
    block device, such as a USB stick.
  - Runs entirely over the router's busybox shell through the connection, as an action
    plugin; the router needs no Python. It also works on routers that have Python.
  - Gathers facts, plans a list of shell commands, and runs them. Check mode returns the
    same list of commands (RV(commands)) without running them.
  - Preflight checks that the target is OpenWrt (C(/etc/openwrt_release)), finds the
    package manager (C(opkg) or C(apk)), and checks for C(block) (block-mount), the
    kernel filesystem and C(mkfs.ext4) or C(mkfs.f2fs) when formatting.
  - With O(copy_overlay=true), copies the current C(/overlay) onto the device with busybox
    C(tar), keeping owners, modes, symlinks, hardlinks, fifos and device nodes (overlay
    whiteouts), then compares both trees (type, mode, owner, size, link count, mtime,
    link target, MD5 of every file) before moving the copy into place.
  - Writes C(/etc/config/fstab) through C(uci) when the router has it, otherwise by
    rewriting the file atomically, keeping unrelated sections and comments. The device's
    copy of the overlay gets the same C(fstab).
options:
  state:
    description:
      - V(present) sets extroot up on the device.
      - V(absent) disables extroot (C(enabled '0')) so the router boots on its internal
        overlay again. The device and its data are left alone.
    type: str
    choices: [present, absent]
    default: present
  device:
    description:
      - Path of the block device to use, for example C(/dev/sda1).
      - One of O(device), O(uuid) or O(label) is required when O(state=present).
    type: str
  uuid:
    description:
      - Find the device by its filesystem UUID (from C(block info) or C(blkid)).
    type: str
  label:
    description:
      - Filesystem label. Finds the device by its label when neither O(device) nor
        O(uuid) is given.
      - The label O(format) writes; C(extroot) when not set.
    type: str
  fstype:
    description:
      - Filesystem that O(format) creates.
    type: str
    choices: [ext4, f2fs]
    default: ext4
  format:
    description:
      - Create an O(fstype) filesystem labelled O(label) on the device, unless it already
        holds exactly that (so a second run does nothing).
      - Refuses to format a device that holds another filesystem, a partition table, or
        other data in its first 4 KiB, unless O(force=true). Never formats a mounted device.
    type: bool
    default: false
  force:
    description:
      - Allow O(format) to destroy an existing filesystem or partition table.
    type: bool
    default: false
  copy_overlay:
    description:
      - Copy the current overlay onto the device when the device does not hold one yet
        (no C(upper) directory for O(target=/overlay), no C(etc) for O(target=/)).
    type: bool
    default: true
  target:
    description:
      - V(/overlay) moves only the overlay (the usual extroot).
      - V(/) makes the device the whole root filesystem (full pivot); the copy is then
        taken from a read-only bind mount of C(/).
    type: str
    choices: [/overlay, /]
    default: /overlay
  keep_rwm:
    description:
      - Add a C(rwm) mount section so that the internal rootfs_data stays reachable at
        C(/rwm) once extroot is active. Only used with O(target=/overlay).
      - V(false) leaves an existing C(rwm) section as it is.
    type: bool
    default: true
  reset_uuid_check:
    description:
      - Remove the C(.extroot-uuid) tags from the device so that the next boot accepts
        it after a sysupgrade changed the rootfs identity.
    type: bool
    default: false
  install_packages:
    description:
      - Install what extroot needs and the router lacks (C(block-mount), C(kmod-fs-ext4)
        or C(kmod-fs-f2fs), C(e2fsprogs) or C(mkf2fs), C(kmod-usb-storage)) with C(opkg)
        or C(apk). The router needs access to its package feeds.
    type: bool
    default: false
  reboot:
    description:
      - Reboot when the new setting is not active yet, wait for the router to come back,
        and check that O(target) is (or, with O(state=absent), is no longer) on the device.
    type: bool
    default: false
  reboot_timeout:
    description:
      - Seconds to wait for the router to come back after O(reboot).
    type: int
    default: 300
extends_documentation_fragment:
  - lapis.layers.attributes
  - lapis.layers.attributes.action
attributes:
  action:
    support: full
    details:
      All the work is done by the action plugin through the router's shell; the module
      file only holds the documentation.
  check_mode:
    support: full
    details:
      - Check mode mounts the device read-only to look at it, and unmounts it again.
      - When a format is planned, the UUID shown is the one this run would have used.
  diff_mode:
    support: full
    details:
      - The diff is C(/etc/config/fstab) before and after. When the router has C(uci),
        C(uci commit) rewrites the file in its own layout (dropping comments), which the
        predicted diff does not show.
  idempotent:
    support: full
  platform:
    platforms: OpenWrt
notes:
  - Become is not used; connect as C(root), as OpenWrt's dropbear expects.
  - Overlayfs keeps opaque directories and redirects in C(trusted.overlay.*) extended
    attributes. Busybox C(tar) does not copy extended attributes, so a directory that was
    deleted and recreated in the old overlay shows the rom's files again after the move.
    Check C(getfattr -R -m trusted.overlay /overlay/upper) on a router that has it.
  - The copy is verified against the live C(/overlay); a file written during the copy
    makes the verification fail (nothing is moved into place then). Run it again.
  - Two runs on one router at the same time are refused (lock directory
    C(/tmp/lapis-extroot)); a run that was killed leaves it until the next reboot or
    until it is removed by hand.
  - With O(reboot=true) the reboot is detected by a marker file in C(/tmp) (a tmpfs on
    OpenWrt) disappearing.
  - A command on the router that exits with status 255 (C(opkg) does when a package
    cannot be installed) is reported with status 254, because the ssh connection plugin
    takes 255 for a lost connection and would call the router unreachable.
  - Formatting checks the first 4 KiB of the device for partition tables and signatures
    and C(block info) for filesystems; give the partition (C(/dev/sda1)) or set
    O(force=true) for a whole disk that once held a partition table.
seealso:
  - name: OpenWrt extroot configuration
    description: The manual steps this module automates.
    link: https://openwrt.org/docs/guide-user/additional-software/extroot_configuration
author:
  - Lapis Layers Developers (@lapis-layers)
"""

EXAMPLES = r"""
- name: Move the overlay to a fresh USB stick
  lapis.layers.extroot:
    device: /dev/sda1
    format: true
    label: extroot

- name: Re-enable an existing extroot after a sysupgrade and reboot into it
  lapis.layers.extroot:
    label: extroot
    reset_uuid_check: true
    reboot: true

- name: Go back to the internal overlay on next boot, keeping the stick's data
  lapis.layers.extroot:
    state: absent
"""

RETURN = r"""
device:
  description: The extroot device path.
  returned: always
  type: str
  sample: /dev/sda1
uuid:
  description: Filesystem UUID written to C(fstab) (null with O(state=absent)).
  returned: always
  type: str
  sample: 3b1c2b0e-4b8a-4a43-9d43-0e6a3f1c2d55
target:
  description: The extroot target, V(/overlay) or V(/).
  returned: always
  type: str
  sample: /overlay
formatted:
  description: Whether the device was (or in check mode would be) formatted.
  returned: always
  type: bool
copied:
  description: Whether the overlay was (or would be) copied onto the device.
  returned: always
  type: bool
extroot_active:
  description: Whether the running system already uses the device as its extroot.
  returned: always
  type: bool
reboot_pending:
  description: The configuration takes effect on the next boot, which has not happened.
  returned: always
  type: bool
rebooted:
  description: Whether this run rebooted the router.
  returned: always
  type: bool
packages_installed:
  description: Packages installed (or that would be) by O(install_packages).
  returned: always
  type: list
  elements: str
  sample: [block-mount, kmod-fs-ext4]
commands:
  description: The shell commands run on the router, in order (in check mode, those that would be).
  returned: always
  type: list
  elements: str
steps:
  description: Names of the changing steps, in order.
  returned: always
  type: list
  elements: str
  sample: [format, copy, fstab, fstab_copy]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.lapis.layers.plugins.module_utils.extroot import (
    ARGUMENT_SPEC,
    MUTUALLY_EXCLUSIVE,
    REQUIRED_IF,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=MUTUALLY_EXCLUSIVE,
        required_if=REQUIRED_IF,
        supports_check_mode=True,
    )
    module.fail_json(
        msg="lapis.layers.extroot runs as an action plugin on the controller;"
        " call it as a task (lapis.layers.extroot), not as a bare module"
    )


if __name__ == "__main__":
    main()
