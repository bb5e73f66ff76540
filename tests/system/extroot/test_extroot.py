"""lapis.layers.extroot against simulated OpenWrt routers that have no Python.

Oracles: the USB stick (a loop device) is mounted on the host and walked with
``os.lstat``; filesystem identity comes from the host's util-linux ``blkid``; the
router's fstab is read back over SSH and parsed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.lapis.layers.plugins.module_utils import uci
from ansible_collections.lapis.layers.tests.system.extroot.conftest import (
    ADDRESSES,
    Router,
    sh,
)


@contextmanager
def mounted(device: str, where: Path, readonly: bool = True) -> Iterator[Path]:
    """Mount the USB stick on the host (the test's own view), always unmounted after."""
    where.mkdir(parents=True, exist_ok=True)
    sh("mount", "-o", "ro,noload" if readonly else "rw", device, where)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under root: type, mode, owner, size, content, link target, rdev, links."""
    entries: dict[str, tuple[Any, ...]] = {}
    paths_of_inode: dict[int, list[str]] = {}
    inode_of: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            extra: Any = None
            if stat.S_ISREG(st.st_mode):
                extra = (st.st_size, hashlib.sha256(path.read_bytes()).hexdigest())
                paths_of_inode.setdefault(st.st_ino, []).append(rel)
                inode_of[rel] = st.st_ino
            elif stat.S_ISLNK(st.st_mode):
                extra = str(path.readlink())
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                extra = st.st_rdev
            kind, mode = stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)
            entries[rel] = (kind, mode, st.st_uid, st.st_gid, extra)
    for rel, ino in inode_of.items():  # hardlinks: the sorted names sharing an inode
        entries[rel] += (sorted(paths_of_inode[ino]),)
    return entries


def blkid(device: str, tag: str) -> str:
    return sh("blkid", "-o", "value", "-s", tag, device).strip()


def router_file(router: Router, ssh_cmd: list[str], path: str) -> str:
    return router.shell(ssh_cmd, f"cat {path}")


def extroot_section(text: str) -> uci.Section:
    section = uci.parse(text).find("extroot")
    assert section is not None, text
    return section


def test_fresh_extroot_check_apply_idempotent(
    make_router: Any, extroot_adhoc: Any, ssh_cmd: list[str], tmp_path: Path
) -> None:
    router = make_router("r1", ADDRESSES[0])
    assert "no-python" in router.shell(ssh_cmd, "command -v python3 python || echo no-python")
    image_before = hashlib.sha256(router.usb_image.read_bytes()).hexdigest()
    fstab_before = router_file(router, ssh_cmd, "/etc/config/fstab")
    args = {"device": "/dev/sda", "format": True}

    # check mode: the full plan, nothing changed on the stick or in fstab
    check = extroot_adhoc([router], check=True, diff=True, **args)["r1"]
    assert check["changed"] is True, check
    assert check["steps"] == ["format", "copy", "fstab", "fstab_copy"]
    assert "config mount 'extroot'" in check["diff"]["after"]
    assert hashlib.sha256(router.usb_image.read_bytes()).hexdigest() == image_before
    assert router_file(router, ssh_cmd, "/etc/config/fstab") == fstab_before

    # apply
    result = extroot_adhoc([router], diff=True, **args)["r1"]
    assert result["changed"] is True, result
    assert result["steps"] == ["format", "copy", "fstab", "fstab_copy"]
    assert result["reboot_pending"] is True and result["extroot_active"] is False
    assert blkid(router.usb_loop, "TYPE") == "ext4"
    assert blkid(router.usb_loop, "LABEL") == "extroot"
    fs_uuid = blkid(router.usb_loop, "UUID")
    assert result["uuid"] == fs_uuid

    fstab = router_file(router, ssh_cmd, "/etc/config/fstab")
    assert result["diff"]["before"] == fstab_before and result["diff"]["after"] == fstab
    section = extroot_section(fstab)
    assert section.options() == {"target": "/overlay", "uuid": fs_uuid, "enabled": "1"}
    rwm = uci.parse(fstab).find("rwm")
    assert rwm is not None and rwm.get("device") == router.flash_loop
    assert fstab.startswith(fstab_before), "unrelated sections and comments must stay"
    nas = uci.parse(fstab).find("nas")
    assert nas is not None and nas.get_list("options") == ["noatime", "nodiratime"]

    with mounted(router.usb_loop, tmp_path / "stick") as stick:
        copied = tree(stick / "upper")
        expected = tree(router.sample / "upper")
        device_fstab = (stick / "upper/etc/config/fstab").read_text()
        leftovers = sorted(p.name for p in stick.iterdir())
    assert device_fstab == fstab
    copied.pop("etc/config/fstab")
    expected.pop("etc/config/fstab")
    assert copied == expected
    assert leftovers == ["lost+found", "upper", "work"]

    # second run and a check-mode run: nothing to do
    again = extroot_adhoc([router], diff=True, **args)["r1"]
    assert again["changed"] is False and again["commands"] == [], again
    assert again["uuid"] == fs_uuid
    # found by its filesystem UUID instead of its path, in check mode: nothing to do
    by_uuid = extroot_adhoc([router], check=True, uuid=fs_uuid)["r1"]
    assert by_uuid["changed"] is False and by_uuid["device"] == "/dev/sda", by_uuid


@pytest.mark.parametrize("content", ["ext4-with-data", "dos-partition-table"])
def test_refuses_to_format_a_device_with_data(
    make_router: Any, extroot_adhoc: Any, tmp_path: Path, content: str
) -> None:
    router = make_router("r1", ADDRESSES[0])
    if content == "ext4-with-data":
        sh("mkfs.ext4", "-q", "-L", "photos", router.usb_loop)
        with mounted(router.usb_loop, tmp_path / "stick", readonly=False) as stick:
            (stick / "holiday.jpg").write_bytes(b"precious")
    else:
        # one Linux partition from sector 2048 to the end, in an MBR written by hand
        entry = b"\0" * 4 + b"\x83" + b"\0" * 3 + struct.pack("<II", 2048, 96 * 1024 - 2048)
        with open(router.usb_image, "r+b") as f:
            f.seek(446)
            f.write(entry + b"\0" * 48 + b"\x55\xaa")
        assert sh("blkid", "-p", "-o", "value", "-s", "PTTYPE", router.usb_loop).strip() == "dos"
    image_before = hashlib.sha256(router.usb_image.read_bytes()).hexdigest()

    refused = extroot_adhoc([router], device="/dev/sda", format=True)["r1"]
    assert refused.get("failed") is True, refused
    assert "refusing to format /dev/sda" in refused["msg"]
    assert "force: true" in refused["msg"]
    assert ("photos" in refused["msg"]) == (content == "ext4-with-data")
    assert hashlib.sha256(router.usb_image.read_bytes()).hexdigest() == image_before

    forced = extroot_adhoc([router], device="/dev/sda", format=True, force=True)["r1"]
    assert forced["changed"] is True and forced["formatted"] is True, forced
    assert blkid(router.usb_loop, "LABEL") == "extroot"


def test_state_absent_disables_and_keeps_data(
    make_router: Any, extroot_adhoc: Any, ssh_cmd: list[str], tmp_path: Path
) -> None:
    router = make_router("r1", ADDRESSES[0])
    assert extroot_adhoc([router], device="/dev/sda", format=True)["r1"]["changed"] is True

    absent = extroot_adhoc([router], diff=True, state="absent", device="/dev/sda")["r1"]
    assert absent["changed"] is True, absent
    assert absent["steps"] == ["fstab", "fstab_copy"]
    fstab = router_file(router, ssh_cmd, "/etc/config/fstab")
    assert extroot_section(fstab).get("enabled") == "0"
    assert absent["diff"]["after"] == fstab
    with mounted(router.usb_loop, tmp_path / "stick") as stick:
        assert (stick / "upper/srv/data/random.bin").read_bytes() == (
            router.sample / "upper/srv/data/random.bin"
        ).read_bytes()
        assert (stick / "upper/etc/config/fstab").read_text() == fstab

    again = extroot_adhoc([router], state="absent", device="/dev/sda")["r1"]
    assert again["changed"] is False, again
    without_device = extroot_adhoc([router], state="absent")["r1"]
    assert without_device["changed"] is False, without_device


def test_reset_uuid_check_removes_the_tags(
    make_router: Any, extroot_adhoc: Any, tmp_path: Path
) -> None:
    router = make_router("r1", ADDRESSES[0])
    assert extroot_adhoc([router], device="/dev/sda", format=True)["r1"]["changed"] is True
    with mounted(router.usb_loop, tmp_path / "stick", readonly=False) as stick:
        (stick / "etc").mkdir()
        (stick / "etc/.extroot-uuid").write_text("d7449c47-e8e73a77-ff8e465b-f8fc502b")
        (stick / ".extroot-uuid").write_text("d7449c47-e8e73a77-ff8e465b-f8fc502b")

    reset = extroot_adhoc([router], label="extroot", reset_uuid_check=True)["r1"]
    assert reset["changed"] is True and reset["steps"] == ["reset_uuid_check"], reset
    with mounted(router.usb_loop, tmp_path / "stick") as stick:
        assert not (stick / "etc/.extroot-uuid").exists()
        assert not (stick / ".extroot-uuid").exists()
        assert (stick / "upper/srv/data/plain.txt").exists()
    again = extroot_adhoc([router], label="extroot", reset_uuid_check=True)["r1"]
    assert again["changed"] is False, again


def test_preflight_and_package_installation(
    make_router: Any, extroot_adhoc: Any, ssh_cmd: list[str]
) -> None:
    router = make_router("r1", ADDRESSES[0])
    kernel_f2fs = "f2fs" in Path("/proc/filesystems").read_text()
    if not kernel_f2fs:
        f2fs = extroot_adhoc([router], device="/dev/sda", format=True, fstype="f2fs")["r1"]
        assert f2fs.get("failed") is True and "kmod-fs-f2fs" in f2fs["msg"], f2fs

    router.shell(ssh_cmd, "mkdir /tmp/lapis-extroot")
    locked = extroot_adhoc([router], device="/dev/sda", format=True)["r1"]
    assert locked.get("failed") is True and "another extroot run" in locked["msg"], locked
    router.shell(ssh_cmd, "rmdir /tmp/lapis-extroot")

    router.shell(ssh_cmd, "rm /sbin/block")
    no_block = extroot_adhoc([router], device="/dev/sda", format=True)["r1"]
    assert no_block.get("failed") is True, no_block
    assert "block-mount" in no_block["msg"] and "install_packages" in no_block["msg"]

    # install_packages through opkg (sim/opkg: a feed holding block-mount only)
    with_install = {"device": "/dev/sda", "format": True, "install_packages": True}
    planned = extroot_adhoc([router], check=True, **with_install)["r1"]
    assert planned["changed"] is True and planned["packages_installed"] == ["block-mount"]
    assert "no-block" in router.shell(ssh_cmd, "command -v block || echo no-block")
    if not kernel_f2fs:
        f2fs = extroot_adhoc([router], **with_install, fstype="f2fs")["r1"]
        assert f2fs.get("failed") is True, f2fs
        assert "Cannot install package kmod-fs-f2fs" in f2fs["msg"], f2fs
    installed = extroot_adhoc([router], **with_install)["r1"]
    assert installed["packages_installed"] == ["block-mount"], installed
    assert installed["formatted"] is True and installed["changed"] is True
    assert router.shell(ssh_cmd, "command -v block").strip() == "/sbin/block"
    router.shell(ssh_cmd, "rm /sbin/block")

    router.shell(ssh_cmd, "rm /etc/openwrt_release")
    not_openwrt = extroot_adhoc([router], device="/dev/sda")["r1"]
    assert not_openwrt.get("failed") is True and "not OpenWrt" in not_openwrt["msg"]

    bad = extroot_adhoc([router], device="sda")["r1"]
    assert bad.get("failed") is True and "not a path under /dev" in bad["msg"], bad
    assert "lapis" not in router.shell(ssh_cmd, "ls -a /tmp")


def overlay_source(router: Router, ssh_cmd: list[str]) -> str:
    mounts = router.shell(ssh_cmd, "cat /proc/mounts").splitlines()
    return next(line.split()[0] for line in mounts if line.split()[1] == "/overlay")


def test_reboot_into_extroot_and_back(
    make_router: Any, extroot_adhoc: Any, ssh_cmd: list[str]
) -> None:
    router = make_router("r1", ADDRESSES[0])
    assert overlay_source(router, ssh_cmd) == router.flash_loop
    marker = "echo written-before-reboot > /srv/data/marker"

    on = extroot_adhoc([router], device="/dev/sda", format=True, reboot=True)["r1"]
    assert on["rebooted"] is True and on["extroot_active"] is True, on
    assert on["reboot_pending"] is False and on["changed"] is True
    assert overlay_source(router, ssh_cmd) == "/dev/sda"
    assert router.shell(ssh_cmd, "cat /srv/data/plain.txt").startswith("router r1")
    router.shell(ssh_cmd, marker)

    again = extroot_adhoc([router], device="/dev/sda", format=True, reboot=True)["r1"]
    assert again["changed"] is False and again["rebooted"] is False, again
    assert again["extroot_active"] is True and again["reboot_pending"] is False

    off = extroot_adhoc([router], state="absent", device="/dev/sda", reboot=True)["r1"]
    assert off["rebooted"] is True and off["extroot_active"] is False, off
    assert off["steps"] == ["fstab", "fstab_copy"]
    assert overlay_source(router, ssh_cmd) == router.flash_loop
    assert "marker" not in router.shell(ssh_cmd, "ls /srv/data")  # written on the stick only


def test_full_pivot_copies_the_whole_root(
    make_router: Any, extroot_adhoc: Any, ssh_cmd: list[str], tmp_path: Path
) -> None:
    router = make_router("r1", ADDRESSES[0])
    args = {"device": "/dev/sda", "format": True, "target": "/"}
    result = extroot_adhoc([router], **args)["r1"]
    assert result["steps"] == ["format", "copy", "fstab", "fstab_copy"], result
    assert result["target"] == "/" and result["reboot_pending"] is True
    fstab = router_file(router, ssh_cmd, "/etc/config/fstab")
    section = extroot_section(fstab)
    assert section.get("target") == "/" and section.get("uuid") == blkid(router.usb_loop, "UUID")
    assert uci.parse(fstab).find("rwm") is None  # /rwm only goes with target /overlay
    with mounted(router.usb_loop, tmp_path / "stick") as stick:
        assert (stick / "etc/config/fstab").read_text() == fstab
        assert (stick / "srv/data/plain.txt").read_text().startswith("router r1")
        assert (stick / "etc/openwrt_release").is_file() and (stick / "bin/busybox").is_file()
        assert not (stick / "etc/motd").exists()  # removed in the overlay: a whiteout
        assert sorted(p.name for p in (stick / "proc").iterdir()) == []
        assert not (stick / "upper").exists()
    again = extroot_adhoc([router], **args)["r1"]
    assert again["changed"] is False, again
