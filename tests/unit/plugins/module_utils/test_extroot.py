"""The extroot planner and parsers, fed with captured router output."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from ansible_collections.lapis.layers.plugins.module_utils import uci
from ansible_collections.lapis.layers.plugins.module_utils.extroot import (
    MARK,
    BlockDevice,
    CommandResult,
    Context,
    DeviceFacts,
    ExtrootError,
    Options,
    Plan,
    Step,
    check_openwrt,
    find_device,
    install_command,
    missing_packages,
    parse_device,
    parse_system,
    partition_table,
    plan_absent,
    plan_present,
    run_plan,
)

UUID = "0f4a3c1e-7b2d-4e5f-8a9b-1c2d3e4f5a6b"
NEW_UUID = "11111111-2222-4333-8444-555555555555"
FSTAB = "config global\n\toption anon_swap '0'\n"


def gathered(**sections: str) -> str:
    """Gather-script output with the given sections (and the end marker)."""
    return "".join(f"\n{MARK}{k}\n{v}" for k, v in {**sections, "end": ""}.items())


SYSTEM = gathered(
    release="DISTRIB_ID='OpenWrt'\nDISTRIB_RELEASE='23.05.3'\n",
    tools="opkg\nblock\ntar\nmkfs.ext4\n",
    filesystems="nodev\tsysfs\n\text4\nnodev\toverlay\n",
    mounts=(
        "/dev/root /rom squashfs ro,relatime 0 0\n"
        "/dev/ubi0_1 /overlay ubifs rw,noatime 0 0\n"
        "overlayfs:/overlay / overlay rw,noatime,lowerdir=/,upperdir=/overlay/upper 0 0\n"
    ),
    fstab=f"present\n{FSTAB}",
    devices=(
        '/dev/ubi0_1: UUID="" VERSION="w4r0" MOUNT="/overlay" TYPE="ubifs"\n'
        f'/dev/sda1: UUID="{UUID}" LABEL="extroot" VERSION="1.0" TYPE="ext4"\n'
        '/dev/sdb: UUID="AB12-CD34" LABEL="PHOTOS" VERSION="FAT32" MOUNT="/mnt/sdb" TYPE="vfat"\n'
    ),
    usb="loaded\n",
)


def system(**changes: Any) -> Any:
    return replace(parse_system(SYSTEM), **changes)


def device(entries: str = "lost+found\n", copy_fstab: str | None = None, **kw: Any) -> DeviceFacts:
    info = kw.pop("info", BlockDevice("/dev/sda1", UUID, "extroot", "ext4"))
    sections = {"exists": "yes\n", "head": "00 " * 4096, "probed": "yes\n", "entries": entries}
    if copy_fstab is not None:
        sections["copy_fstab"] = f"upper/etc/config/fstab\n{copy_fstab}"
    sections.update(kw)
    return parse_device("/dev/sda1", info, gathered(**sections))


def ctx(dev: DeviceFacts | None, use_uci: bool = False, facts: Any = None, **opts: Any) -> Context:
    args = {"device": "/dev/sda1", **opts}
    return Context(facts or system(), dev, Options.from_args(args), use_uci)


def names(plan: Plan) -> list[str]:
    return [step.name for step in plan.steps]


def test_parse_system() -> None:
    facts = parse_system(SYSTEM)
    assert facts.release["DISTRIB_RELEASE"] == "23.05.3"
    assert facts.package_manager == "opkg"
    assert "ext4" in facts.filesystems and "overlay" in facts.filesystems
    assert facts.fstab == FSTAB
    assert [d.path for d in facts.devices] == ["/dev/ubi0_1", "/dev/sda1", "/dev/sdb"]
    assert facts.devices[2] == BlockDevice("/dev/sdb", "AB12-CD34", "PHOTOS", "vfat", "/mnt/sdb")
    assert facts.mountpoint_of("/dev/sdb") is None  # block info MOUNT is not /proc/mounts
    assert facts.usb_storage is True


def test_parse_system_without_fstab_and_truncated_output() -> None:
    facts = parse_system(gathered(release="DISTRIB_ID='OpenWrt'\n", fstab=""))
    assert facts.fstab is None
    with pytest.raises(ExtrootError, match="stopped early"):
        parse_system(f"\n{MARK}release\nDISTRIB_ID='OpenWrt'\n")


def test_not_openwrt_is_refused() -> None:
    with pytest.raises(ExtrootError, match="not OpenWrt"):
        check_openwrt(parse_system(gathered(release="")))


@pytest.mark.parametrize(
    ("args", "path"),
    [
        ({"device": "/dev/sda1"}, "/dev/sda1"),
        ({"uuid": UUID.upper()}, "/dev/sda1"),
        ({"label": "PHOTOS"}, "/dev/sdb"),
        ({"label": "missing"}, None),
        ({"device": "/dev/sdz"}, "/dev/sdz"),
    ],
)
def test_find_device(args: dict[str, str], path: str | None) -> None:
    found = find_device(parse_system(SYSTEM), Options.from_args(args))
    assert (found.path if found else None) == path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"device": "sda1"}, "not a path under /dev"),
        ({"device": "/dev/sda1; reboot"}, "not a path under /dev"),
        ({"uuid": "abc"}, "not a filesystem UUID"),
        ({"label": "a label with spaces"}, "not usable"),
        ({"label": "x" * 17}, "not usable"),
        ({"device": "/dev/sda", "reboot_timeout": 1}, "at least 10"),
    ],
)
def test_options_reject_bad_values(args: dict[str, Any], message: str) -> None:
    with pytest.raises(ExtrootError, match=message):
        Options.from_args(args)


def test_partition_table_signatures() -> None:
    blank = bytearray(4096)
    assert partition_table(bytes(blank)) is None
    blank[510:512] = b"\x55\xaa"
    assert partition_table(bytes(blank)) == "dos"
    blank[512:520] = b"EFI PART"
    assert partition_table(bytes(blank)) == "gpt"


def test_fresh_device_plan_formats_copies_then_configures() -> None:
    blank = device(info=BlockDevice("/dev/sda1"), entries="")
    plan = plan_present(ctx(blank, format=True), NEW_UUID)
    assert names(plan) == ["format", "mount", "copy", "fstab", "fstab_copy", "umount"]
    assert plan.uuid == NEW_UUID and plan.formatted and plan.copied and plan.reboot_pending
    assert plan.commands[0] == f"mkfs.ext4 -q -F -L extroot -U {NEW_UUID} /dev/sda1"
    assert "mount -t ext4 /dev/sda1 /tmp/lapis-extroot/device" in plan.commands[1]
    assert "tar -cf -" in plan.commands[2] and "cmp -s" in plan.commands[2]
    after = uci.parse(plan.fstab_after)
    extroot = after.find("extroot")
    assert extroot is not None and extroot.options() == {
        "target": "/overlay",
        "uuid": NEW_UUID,
        "enabled": "1",
    }
    rwm = after.find("rwm")
    assert rwm is not None and rwm.get("device") == "/dev/ubi0_1"
    assert "/tmp/lapis-extroot/device/upper/etc/config/fstab" in plan.commands[4]


def test_keep_rwm_false_writes_no_rwm_section() -> None:
    blank = device(info=BlockDevice("/dev/sda1"), entries="")
    plan = plan_present(ctx(blank, format=True, keep_rwm=False), NEW_UUID)
    assert uci.parse(plan.fstab_after).find("rwm") is None
    assert not plan.warnings


def test_f2fs_format_command_and_label() -> None:
    blank = device(info=BlockDevice("/dev/sda1"), entries="")
    plan = plan_present(ctx(blank, format=True, fstype="f2fs", label="big"), NEW_UUID)
    assert plan.commands[0] == f"mkfs.f2fs -q -f -l big -U {NEW_UUID} /dev/sda1"
    assert "mount -t f2fs" in plan.commands[1]


def test_done_device_plans_nothing() -> None:
    first = plan_present(ctx(device(), format=True), NEW_UUID)
    done = device(entries="lost+found\nupper\nwork\n", copy_fstab=first.fstab_after)
    facts = system(fstab=first.fstab_after)
    plan = plan_present(ctx(done, facts=facts, format=True), NEW_UUID)
    assert plan.steps == [] and not plan.changed
    assert plan.uuid == UUID and plan.reboot_pending


def test_stale_device_copy_of_fstab_is_rewritten() -> None:
    first = plan_present(ctx(device(), format=True), NEW_UUID)
    done = device(entries="upper\n", copy_fstab=FSTAB)
    plan = plan_present(ctx(done, facts=system(fstab=first.fstab_after)), NEW_UUID)
    assert names(plan) == ["mount", "fstab_copy", "umount"]


@pytest.mark.parametrize(
    ("info", "head", "holds"),
    [
        (
            BlockDevice("/dev/sda1", UUID, "photos", "ext4"),
            b"",
            "ext4 filesystem labelled 'photos'",
        ),
        (BlockDevice("/dev/sda1", "AB12", None, "vfat"), b"", "a vfat filesystem"),
        (BlockDevice("/dev/sda1"), b"\0" * 510 + b"\x55\xaa", "a dos partition table"),
        (BlockDevice("/dev/sda1"), b"\0" * 100 + b"LUKS", "data of an unknown kind"),
    ],
)
def test_format_refuses_to_destroy_data_without_force(
    info: BlockDevice, head: bytes, holds: str
) -> None:
    dev = replace(device(info=info), head=head)
    with pytest.raises(ExtrootError, match=f"refusing to format /dev/sda1: it holds .*{holds}"):
        plan_present(ctx(dev, format=True), NEW_UUID)
    forced = plan_present(ctx(dev, format=True, force=True), NEW_UUID)
    assert names(forced)[0] == "format"


def test_format_refuses_a_mounted_device_even_with_force() -> None:
    facts = system()
    facts.mounts.append(facts.mounts[0].__class__("/dev/sda1", "/mnt/sda1", "vfat"))
    dev = device(info=BlockDevice("/dev/sda1", "AB12", None, "vfat"))
    with pytest.raises(ExtrootError, match="mounted at /mnt/sda1; unmount it first"):
        plan_present(ctx(dev, facts=facts, format=True, force=True), NEW_UUID)


def test_without_format_a_device_needs_a_linux_filesystem() -> None:
    dev = device(info=BlockDevice("/dev/sda1", "AB12", None, "vfat"))
    with pytest.raises(ExtrootError, match=r"holds a vfat filesystem.*format: true"):
        plan_present(ctx(dev), NEW_UUID)


def test_missing_device_names_usb_storage() -> None:
    missing = parse_device("/dev/sdz", None, gathered(head=""))
    with pytest.raises(ExtrootError, match=r"not found.*kmod-usb-storage"):
        plan_present(ctx(missing, device="/dev/sdz"), NEW_UUID)


def test_uci_present_uses_uci_batch() -> None:
    plan = plan_present(ctx(device(entries="upper\n"), use_uci=True), NEW_UUID)
    fstab = plan.steps[names(plan).index("fstab")].command
    assert fstab.startswith("uci -q batch <<'LAPIS_UCI_EOF'\n")
    assert "set fstab.extroot=mount\n" in fstab and f"set fstab.extroot.uuid='{UUID}'" in fstab
    assert fstab.rstrip().endswith("commit fstab\nLAPIS_UCI_EOF")
    assert names(plan)[-2:] == ["fstab_copy", "umount"]


def test_reset_uuid_check_removes_only_existing_tags() -> None:
    dev = device(entries="upper\n", uuid_tags="etc/.extroot-uuid\n.extroot-uuid\n")
    first = plan_present(ctx(dev), NEW_UUID)
    dev = replace(dev, copy_fstab=first.fstab_after)
    plan = plan_present(ctx(dev, facts=system(fstab=first.fstab_after), reset_uuid_check=True), "")
    assert names(plan) == ["mount", "reset_uuid_check", "umount"]
    assert plan.commands[1] == (
        "rm -f /tmp/lapis-extroot/device/etc/.extroot-uuid /tmp/lapis-extroot/device/.extroot-uuid"
    )


def test_full_pivot_copies_a_bind_mount_of_root() -> None:
    plan = plan_present(ctx(device(), target="/"), NEW_UUID)
    assert names(plan) == [
        "mount", "bind_root", "copy", "unbind_root", "fstab", "fstab_copy", "umount",
    ]  # fmt: skip
    assert (
        plan.commands[1]
        == "mkdir -p /tmp/lapis-extroot/root && mount -o bind,ro / /tmp/lapis-extroot/root"
    )
    assert "/tmp/lapis-extroot/device/etc/config/fstab" in plan.commands[5]
    assert uci.parse(plan.fstab_after).find("rwm") is None


def test_active_extroot_copies_fstab_to_rwm() -> None:
    facts = parse_system(SYSTEM.replace("/dev/ubi0_1 /overlay ubifs", "/dev/sda1 /overlay ext4"))
    facts.mounts.append(facts.mounts[0].__class__("/dev/ubi0_1", "/rwm", "ubifs"))
    dev = device(entries="upper\nwork\n")
    plan = plan_present(ctx(dev, facts=facts), NEW_UUID)
    assert plan.active and not plan.reboot_pending and not plan.copied
    assert names(plan) == ["fstab", "fstab_copy"]
    tail = "/rwm/upper/etc/config/fstab || { rm -f /rwm/upper/etc/config/fstab.lapis-tmp; exit 1; }"
    assert plan.commands[1].endswith(tail)
    rwm = uci.parse(plan.fstab_after).find("rwm")
    assert rwm is not None and rwm.get("device") == "/dev/ubi0_1"


def test_absent_disables_and_mirrors_to_the_device() -> None:
    configured = plan_present(ctx(device()), NEW_UUID).fstab_after
    facts = system(fstab=configured)
    dev = device(entries="upper\n", copy_fstab=configured)
    plan = plan_absent(ctx(dev, facts=facts, state="absent"))
    assert names(plan) == ["fstab", "mount", "fstab_copy", "umount"]
    section = uci.parse(plan.fstab_after).find("extroot")
    assert section is not None and section.get("enabled") == "0"
    assert not plan.reboot_pending

    done = plan_absent(
        ctx(replace(dev, copy_fstab=plan.fstab_after), facts=system(fstab=plan.fstab_after),
            state="absent")
    )  # fmt: skip
    assert done.steps == []
    without_device = Context(system(fstab=configured), None, Options(state="absent"), False)
    assert names(plan_absent(without_device)) == ["fstab"]


@pytest.mark.parametrize(
    ("facts_changes", "opts", "formatting", "found", "wanted"),
    [
        ({}, {}, False, True, []),
        ({"tools": {"opkg"}}, {}, True, True, ["block-mount", "e2fsprogs"]),
        ({}, {"fstype": "f2fs"}, True, True, ["kmod-fs-f2fs", "mkf2fs"]),
        ({"usb_storage": False}, {}, False, False, ["kmod-usb-storage"]),
        ({"tools": set()}, {"state": "absent"}, False, True, []),
    ],
)
def test_missing_packages(
    facts_changes: dict[str, Any],
    opts: dict[str, Any],
    formatting: bool,
    found: bool,
    wanted: list[str],
) -> None:
    options = Options.from_args({"device": "/dev/sda1", **opts})
    assert missing_packages(system(**facts_changes), options, formatting, found) == wanted


def test_install_commands() -> None:
    assert install_command("opkg", ["block-mount"]) == "opkg update && opkg install block-mount"
    assert install_command("apk", ["a", "b"]) == "apk update && apk add a b"


def test_run_plan_stops_at_the_first_failure() -> None:
    ran: list[str] = []

    def runner(command: str) -> CommandResult:
        ran.append(command)
        return CommandResult(1 if command == "two" else 0, "out", "err")

    plan = Plan(steps=[Step("one", "one"), Step("two", "two"), Step("three", "three")])
    with pytest.raises(ExtrootError, match="step 'two' failed") as err:
        run_plan(plan, runner)
    assert ran == ["one", "two"]
    assert err.value.details["stderr"] == "err"
    assert err.value.details["steps_done"] == [{"step": "one", "rc": 0}, {"step": "two", "rc": 1}]
