"""The overlay spec: validation, kernel escaping, option groups, live comparison."""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.fstab import parse_entry
from ansible_collections.lapis.layers.plugins.module_utils.mountinfo import (
    live_overlay,
    parse_mountinfo_line,
    split_lowerdir,
)
from ansible_collections.lapis.layers.plugins.module_utils.overlay import (
    OverlayError,
    build_spec,
    classify_option,
    compare,
    escape_layer_path,
    join_lowerdir,
    normalize_path,
    read_option_defaults,
    remount_flags,
    render_live,
    spec_from_live,
)

DEFAULTS = {"index": "off", "metacopy": "off", "nfs_export": "off", "redirect_dir": "follow"}


def live(super_options: str, mount_options: str = "rw,relatime", point: str = "/m"):
    line = f"40 27 0:40 / {point} {mount_options} - overlay overlay {super_options}"
    found = live_overlay(parse_mountinfo_line(line))
    assert found is not None
    return found


@pytest.mark.parametrize(
    ("path", "escaped"),
    [
        ("/plain", "/plain"),
        ("/a,b", "/a\\,b"),
        ("/a:b", "/a\\:b"),
        ("/a\\b", "/a\\\\b"),
        ("/a b", "/a b"),
        ("/x\\,:", "/x\\\\\\,\\:"),
    ],
)
def test_escape_layer_path(path: str, escaped: str) -> None:
    assert escape_layer_path(path) == escaped


@pytest.mark.parametrize(
    "lowers",
    [("/a",), ("/a,1", "/b:2", "/c 3", "/d\\4"), ("/trailing\\", "/x::y")],
)
def test_lowerdir_escaping_round_trips_through_the_parser(lowers: tuple[str, ...]) -> None:
    assert split_lowerdir(join_lowerdir(lowers)) == (lowers, ())


@pytest.mark.parametrize(
    ("path", "normal"),
    [("/a/b/", "/a/b"), ("//a//b", "/a/b"), ("/a/./b/../c", "/a/c"), ("/", "/")],
)
def test_normalize_path(path: str, normal: str) -> None:
    assert normalize_path(path) == normal


@pytest.mark.parametrize(
    ("option", "group"),
    [
        ("ro", "vfs"),
        ("nosuid", "vfs"),
        ("noatime", "vfs"),
        ("index=on", "overlay"),
        ("userxattr", "overlay"),
        ("volatile", "overlay"),
        ("nofail", "fstab"),
        ("x-systemd.requires=/srv", "fstab"),
        ("_netdev", "fstab"),
    ],
)
def test_classify_option(option: str, group: str) -> None:
    assert classify_option(option) == group


def test_spec_renders_mount_data_and_fstab() -> None:
    spec = build_spec(
        "/srv/m x/",
        ["/srv/l,1", "/srv/l:2"],
        "/srv/u",
        "/srv/w",
        ["index=on", "nosuid", "nofail"],
    )
    assert spec.path == "/srv/m x"
    assert spec.mount_data() == (
        "lowerdir=/srv/l\\,1:/srv/l\\:2,upperdir=/srv/u,workdir=/srv/w,index=on,nosuid"
    )
    entry = spec.fstab_entry()
    assert entry.options.endswith(",nosuid,nofail")
    assert parse_entry(entry.render()) == entry
    assert not spec.read_only_union


def test_read_only_union_is_mounted_ro() -> None:
    spec = build_spec("/m", ["/a", "/b"])
    assert spec.read_only_union
    assert spec.mount_data() == "lowerdir=/a:/b,ro"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lowerdirs": []}, "no lowerdirs given"),
        ({"lowerdirs": ["relative"]}, "not an absolute path"),
        ({"lowerdirs": ["/a"], "upperdir": "/u"}, "must be given together"),
        ({"lowerdirs": ["/a"], "workdir": "/w"}, "must be given together"),
        ({"lowerdirs": ["/a", "/a/"]}, "listed more than once"),
        ({"lowerdirs": ["/a", "/b"], "options": ["lowerdir=/b"]}, "not allowed in options"),
        ({"lowerdirs": ["/a", "/b"], "options": ["index=on,xino=on"]}, "contains a comma"),
        ({"lowerdirs": ["/a", "/b"], "options": ["rw"]}, "writable read-only union"),
        ({"lowerdirs": ["/a"]}, "read-only union needs at least two lowerdirs"),
        ({"lowerdirs": ["/a\nb", "/c"]}, "newline"),
    ],
)
def test_build_spec_rejects(kwargs: dict, message: str) -> None:
    with pytest.raises(OverlayError, match=message) as caught:
        build_spec("/m", **kwargs)
    assert caught.value.message()


def test_error_message_carries_the_hint() -> None:
    error = OverlayError("upperdir /u is bad", "Use another one")
    assert error.message() == "upperdir /u is bad. Use another one"


WRITABLE = "rw,lowerdir=/a:/b,upperdir=/u,workdir=/w,uuid=on"


@pytest.mark.parametrize(
    ("lowers", "options", "super_options", "mount_options", "new_mount", "remount"),
    [
        (["/a", "/b"], [], WRITABLE, "rw,relatime", False, False),
        (["/b", "/a"], [], WRITABLE, "rw,relatime", True, False),
        (["/a", "/c"], [], WRITABLE, "rw,relatime", True, False),
        (["/a"], [], WRITABLE, "rw,relatime", True, False),
        (["/a", "/b"], ["nosuid"], WRITABLE, "rw,relatime", False, True),
        (["/a", "/b"], ["ro"], WRITABLE, "rw,relatime", False, True),
        (["/a", "/b"], [], WRITABLE, "ro,nosuid,relatime", False, True),
        (["/a", "/b"], ["noatime"], WRITABLE, "rw,noatime", False, False),
        (["/a", "/b"], ["strictatime"], WRITABLE, "rw", False, False),
        (["/a", "/b"], ["index=on"], WRITABLE, "rw,relatime", True, False),
        (["/a", "/b"], ["index=on"], WRITABLE + ",index=on", "rw", False, False),
        (["/a", "/b"], ["index=off"], WRITABLE, "rw,relatime", False, False),
        (["/a", "/b"], ["redirect_dir=follow"], WRITABLE, "rw", False, False),
        (["/a", "/b"], ["xino=on"], WRITABLE, "rw", False, False),
        (["/a", "/b"], ["volatile"], WRITABLE + ",fsync=volatile", "rw", False, False),
        (["/a", "/b"], ["volatile"], WRITABLE, "rw", True, False),
        (["/a", "/b"], ["userxattr"], WRITABLE, "rw", True, False),
        (["/a", "/b"], ["nofail"], WRITABLE, "rw", False, False),
    ],
)
def test_compare(  # noqa: PLR0917 -- one parameter per column of the table above
    lowers: list[str],
    options: list[str],
    super_options: str,
    mount_options: str,
    new_mount: bool,
    remount: bool,
) -> None:
    spec = build_spec("/m", lowers, "/u", "/w", options)
    delta = compare(spec, live(super_options, mount_options), DEFAULTS)
    assert delta.needs_new_mount is new_mount, delta.reasons()
    assert delta.needs_remount is remount, delta.reasons()
    assert delta.in_sync is not (new_mount or remount)


def test_compare_names_set_or_order() -> None:
    spec = build_spec("/m", ["/b", "/a"], "/u", "/w")
    assert "order differs" in compare(spec, live(WRITABLE), DEFAULTS).reasons()[0]
    spec = build_spec("/m", ["/a", "/c"], "/u", "/w")
    assert "set differs" in compare(spec, live(WRITABLE), DEFAULTS).reasons()[0]


def test_compare_normalises_live_paths() -> None:
    spec = build_spec("/m", ["/a", "/b"], "/u", "/w")
    doubled = "rw,lowerdir=//a:/b/,upperdir=/u//,workdir=/w"
    assert compare(spec, live(doubled), DEFAULTS).in_sync


def test_compare_read_only_union() -> None:
    spec = build_spec("/m", ["/a", "/b"])
    assert compare(spec, live("ro,lowerdir=/a:/b", "ro,relatime"), DEFAULTS).in_sync
    writable = compare(spec, live(WRITABLE, "rw"), DEFAULTS)
    assert writable.needs_new_mount


def test_fuse_overlay_needs_a_new_mount() -> None:
    line = "41 27 0:41 / /m rw - fuse.lapis-overlay lapis-overlay rw,user_id=0"
    fuse = live_overlay(parse_mountinfo_line(line))
    assert fuse is not None
    spec = build_spec("/m", ["/a"], "/u", "/w")
    assert compare(spec, fuse, DEFAULTS).needs_new_mount


@pytest.mark.parametrize(
    ("options", "flags"),
    [
        ([], ("rw", "suid", "dev", "exec")),
        (["ro", "nosuid"], ("ro", "nosuid", "dev", "exec")),
        (["noexec", "noatime"], ("rw", "noexec", "noatime", "suid", "dev")),
    ],
)
def test_remount_flags(options: list[str], flags: tuple[str, ...]) -> None:
    assert remount_flags(build_spec("/m", ["/a"], "/u", "/w", options)) == flags


def test_render_live_uses_the_kernel_escaping() -> None:
    shown = render_live(live("rw,lowerdir=/a\\134\\054b:/c,upperdir=/u,workdir=/w"))
    assert shown == "lowerdir=/a\\,b:/c,upperdir=/u,workdir=/w,rw,relatime"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {
                "index": "N",
                "metacopy": "Y",
                "nfs_export": "N",
                "redirect_dir": "N",
                "redirect_always_follow": "Y",
            },
            {"index": "off", "metacopy": "on", "nfs_export": "off", "redirect_dir": "follow"},
        ),
        ({"redirect_dir": "Y"}, {"redirect_dir": "on"}),
        ({"redirect_dir": "N", "redirect_always_follow": "N"}, {"redirect_dir": "off"}),
        ({}, {}),
    ],
)
def test_read_option_defaults(tmp_path: Path, values: dict, expected: dict) -> None:
    for name, value in values.items():
        (tmp_path / name).write_text(f"{value}\n")
    assert read_option_defaults(str(tmp_path)) == expected


@pytest.mark.parametrize(
    ("super_options", "mount_options", "expected"),
    [
        (WRITABLE, "rw,relatime", "lowerdir=/a:/b,upperdir=/u,workdir=/w,uuid=on,relatime"),
        (
            WRITABLE + ",fsync=volatile",
            "ro,nosuid",
            "lowerdir=/a:/b,upperdir=/u,workdir=/w,uuid=on,volatile,ro,nosuid",
        ),
        ("ro,lowerdir=/a\\134\\072x:/b", "ro", "lowerdir=/a\\:x:/b,ro"),
    ],
)
def test_spec_from_live_mounts_the_same_again(
    super_options: str, mount_options: str, expected: str
) -> None:
    spec = spec_from_live(live(super_options, mount_options))
    assert spec is not None
    assert spec.mount_data() == expected


@pytest.mark.parametrize(
    "line",
    [
        "41 27 0:41 / /m rw - fuse.lapis-overlay lapis-overlay rw,user_id=0",
        "41 27 0:41 / /m rw - overlay overlay rw,lowerdir=/a::/data",
        "41 27 0:41 / /m rw - overlay overlay rw,lowerdir=/a,upperdir=/u",
    ],
)
def test_spec_from_live_refuses_what_it_cannot_rebuild(line: str) -> None:
    found = live_overlay(parse_mountinfo_line(line))
    assert found is not None
    assert spec_from_live(found) is None
