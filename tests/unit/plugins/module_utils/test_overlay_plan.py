"""Deciding: each state, from a gathered mount table and fstab to actions and a diff."""

from __future__ import annotations

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.fstab import parse_fstab
from ansible_collections.lapis.layers.plugins.module_utils.mountinfo import (
    live_overlay,
    parse_mountinfo_line,
)
from ansible_collections.lapis.layers.plugins.module_utils.overlay import (
    OverlayError,
    build_spec,
)
from ansible_collections.lapis.layers.plugins.module_utils.overlay_executor import KernelOverlay
from ansible_collections.lapis.layers.plugins.module_utils.overlay_plan import (
    Gathered,
    Request,
    plan,
)

BACKEND = KernelOverlay("/bin/mount", "/bin/umount")
SPEC = build_spec("/m", ["/a", "/b"], "/u", "/w")
FSTAB_LINE = "overlay /m overlay lowerdir=/a:/b,upperdir=/u,workdir=/w 0 0"
FSTAB = f"# keep\n{FSTAB_LINE}\n"
MOUNTED = "40 27 0:40 / /m rw,relatime - overlay overlay rw,lowerdir=/a:/b,upperdir=/u,workdir=/w"
OTHER_LOWERS = "40 27 0:40 / /m rw - overlay overlay rw,lowerdir=/b:/a,upperdir=/u,workdir=/w"
TMPFS = "40 27 0:40 / /m rw - tmpfs scratch rw"


def gathered(line: str | None = None, fstab: str | None = "", missing: tuple = ()) -> Gathered:
    mount = parse_mountinfo_line(line) if line else None
    return Gathered(
        mount=mount,
        live=live_overlay(mount) if mount else None,
        fstab_lines=parse_fstab(fstab) if fstab is not None else None,
        missing_dirs=missing,
        option_defaults={"index": "off"},
    )


def request(state: str, spec=SPEC, force: bool = False, create_dirs: bool = True) -> Request:
    return Request(state, "/m", spec, "/etc/fstab-test", force=force, create_dirs=create_dirs)


def kinds(result) -> list[str]:
    return [action.kind for action in result.actions]


@pytest.mark.parametrize(
    ("state", "line", "fstab", "expected"),
    [
        ("mounted", None, "", ["write_fstab", "mount"]),
        ("mounted", MOUNTED, FSTAB, []),
        ("mounted", MOUNTED, "", ["write_fstab"]),
        ("mounted", None, FSTAB, ["mount"]),
        ("ephemeral", None, None, ["mount"]),
        ("ephemeral", MOUNTED, None, []),
        ("present", None, "", ["write_fstab"]),
        ("present", MOUNTED, FSTAB, []),
        ("present", TMPFS, FSTAB, []),
        ("unmounted", MOUNTED, None, ["unmount"]),
        ("unmounted", None, None, []),
        ("absent", MOUNTED, FSTAB, ["unmount", "write_fstab"]),
        ("absent", None, FSTAB, ["write_fstab"]),
        ("absent", None, "# nothing\n", []),
        ("remounted", MOUNTED, None, ["remount"]),
    ],
)
def test_states(state: str, line: str | None, fstab: str | None, expected: list[str]) -> None:
    result = plan(request(state), gathered(line, fstab), BACKEND)
    assert kinds(result) == expected
    assert result.changed is bool(expected)


def test_mount_command_and_diff() -> None:
    result = plan(request("mounted"), gathered(None, "# keep\n"), BACKEND)
    mount = result.actions[1]
    assert mount.command == (
        "/bin/mount",
        "-t",
        "overlay",
        "-o",
        SPEC.mount_data(),
        "overlay",
        "/m",
    )
    fstab_diff, mount_diff = result.diff("/etc/fstab-test", "/m")
    assert (fstab_diff["before"], fstab_diff["after"]) == ("", FSTAB_LINE + "\n")
    assert (mount_diff["before"], mount_diff["after"]) == ("", SPEC.mount_data() + "\n")
    assert result.fstab_text == "# keep\n" + FSTAB_LINE + "\n"


def test_in_sync_diff_is_equal() -> None:
    result = plan(request("mounted"), gathered(MOUNTED, FSTAB), BACKEND)
    for part in result.diff("/etc/fstab-test", "/m"):
        assert part["before"] == part["after"] != ""


def test_absent_diff_and_text() -> None:
    result = plan(request("absent", spec=None), gathered(MOUNTED, FSTAB), BACKEND)
    fstab_diff, mount_diff = result.diff("/etc/fstab-test", "/m")
    assert (fstab_diff["before"], fstab_diff["after"]) == (FSTAB_LINE + "\n", "")
    assert mount_diff["after"] == ""
    assert result.fstab_text == "# keep\n"


def test_changed_lowers_need_force() -> None:
    with pytest.raises(OverlayError, match="lowerdirs order differs") as caught:
        plan(request("mounted"), gathered(OTHER_LOWERS, FSTAB), BACKEND)
    assert "force=true" in caught.value.hint
    assert "ignores these on remount" in caught.value.hint


def test_force_unmounts_and_mounts_again() -> None:
    result = plan(request("ephemeral", force=True), gathered(OTHER_LOWERS, None), BACKEND)
    assert kinds(result) == ["unmount", "mount"]
    assert "order differs" in result.actions[0].reason
    previous = "lowerdir=/b:/a,upperdir=/u,workdir=/w"
    assert result.actions[0].undo == (
        "/bin/mount",
        "-t",
        "overlay",
        "-o",
        previous,
        "overlay",
        "/m",
    )


def test_flag_change_is_a_remount() -> None:
    spec = build_spec("/m", ["/a", "/b"], "/u", "/w", ["ro", "nosuid"])
    result = plan(request("ephemeral", spec=spec), gathered(MOUNTED, None), BACKEND)
    assert kinds(result) == ["remount"]
    assert result.actions[0].command == (
        "/bin/mount",
        "--options-source",
        "disable",
        "-o",
        "remount,ro,nosuid,dev,exec",
        "/m",
    )
    mount_diff = result.diff("f", "/m")[1]
    assert "rw,relatime" in mount_diff["before"]
    assert mount_diff["after"].endswith("ro,nosuid,relatime\n")


def test_missing_dirs_are_created_before_the_mount() -> None:
    result = plan(request("ephemeral"), gathered(None, None, ("/m", "/u")), BACKEND)
    assert kinds(result) == ["create_dir", "create_dir", "mount"]


def test_missing_dirs_without_create_dirs() -> None:
    with pytest.raises(OverlayError, match="/m, /u does not exist") as caught:
        plan(request("ephemeral", create_dirs=False), gathered(None, None, ("/m", "/u")), BACKEND)
    assert "create_dirs=true" in caught.value.hint


@pytest.mark.parametrize("state", ["mounted", "ephemeral", "unmounted", "absent", "remounted"])
def test_foreign_mount_is_refused(state: str) -> None:
    with pytest.raises(OverlayError, match=r"is a tmpfs mount .*not an overlay"):
        plan(request(state), gathered(TMPFS, FSTAB), BACKEND)


def test_remounted_needs_a_mount() -> None:
    with pytest.raises(OverlayError, match="not mounted, so it cannot be remounted"):
        plan(request("remounted", spec=None), gathered(None, None), BACKEND)


def test_remounted_keeps_live_flags_without_spec() -> None:
    line = "40 27 0:40 / /m ro,nosuid,noatime - overlay overlay ro,lowerdir=/a"
    result = plan(request("remounted", spec=None), gathered(line, None), BACKEND)
    assert result.actions[0].command[-2] == "remount,ro,nosuid,noatime"


def test_remounted_with_other_lowers_needs_force() -> None:
    with pytest.raises(OverlayError, match="force=true"):
        plan(request("remounted"), gathered(OTHER_LOWERS, None), BACKEND)
    result = plan(request("remounted", force=True), gathered(OTHER_LOWERS, None), BACKEND)
    assert kinds(result) == ["unmount", "mount"]


@pytest.mark.parametrize("state", ["mounted", "present", "ephemeral"])
def test_states_that_need_lowerdirs(state: str) -> None:
    with pytest.raises(OverlayError, match="needs lowerdirs"):
        plan(request(state, spec=None), gathered(None, ""), BACKEND)


def test_duplicate_fstab_entries_are_collapsed() -> None:
    fstab = f"{FSTAB_LINE}\n{FSTAB_LINE}\n"
    result = plan(request("present"), gathered(None, fstab), BACKEND)
    assert kinds(result) == ["write_fstab"]
    assert result.fstab_text == FSTAB_LINE + "\n"


@pytest.mark.parametrize("state", ["mounted", "unmounted", "absent", "remounted"])
def test_fuse_overlay_is_left_to_its_daemon(state: str) -> None:
    fuse = "41 27 0:41 / /m rw - fuse.lapis-overlay lapis-overlay rw,user_id=0"
    with pytest.raises(OverlayError, match=r"fuse.lapis-overlay mount .*not a kernel overlay"):
        plan(request(state, force=True), gathered(fuse, FSTAB), BACKEND)
