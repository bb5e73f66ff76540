"""mountinfo parsing: octal escapes, overlay layer escaping, FUSE overlays.

The samples were captured from /proc/self/mountinfo on Linux 6.18 after mounting
overlays whose paths contain ``,`` ``:`` ``\\`` and spaces.
"""

from __future__ import annotations

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.mountinfo import (
    MountInfoError,
    find_mount,
    list_overlays,
    live_overlay,
    overlay_backend,
    parse_mountinfo,
    parse_mountinfo_line,
    split_lowerdir,
    unescape_layer_path,
    unescape_octal,
)

ROOT = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard"
# lowerdir=/t/l,1 : /t/l:2 : "/t/l 3" ; the first path was given with a doubled slash.
ESCAPED = (
    "49 27 0:40 / /t/m rw,relatime - overlay overlay rw,lowerdir=//t/l\\134\\0541:"
    "/t/l\\134:2:/t/l\\0403,upperdir=/t/u,workdir=/t/w,uuid=on"
)
BACKSLASH_RO = (
    "47 27 0:41 / /t/ro ro,relatime - overlay overlay ro,lowerdir=/t/l\\134\\1344:/t/l\\134:2,"
    "redirect_dir=on"
)
SPACE_MOUNT_POINT = (
    "50 27 0:42 / /t/m\\0402 rw,nosuid,relatime - overlay overlay rw,lowerdir=/t/a,"
    "upperdir=/t/u\\134\\054x\\134:y\\040z,workdir=/t/w\\134\\054x:y\\040z,uuid=on"
)
DATA_ONLY = "51 27 0:43 / /t/d rw - overlay overlay rw,lowerdir=/t/a:/t/b::/t/data1::/t/data2"
NEW_API = "52 27 0:44 / /t/n rw - overlay ovl rw,lowerdir+=/t/a,lowerdir+=/t/b\\134:c,datadir+=/t/d"
FUSE = (
    "53 27 0:45 / /t/f rw,nosuid,nodev - fuse.lapis-overlay lapis-overlay "
    "rw,user_id=0,group_id=0,default_permissions,allow_other"
)
FUSE_OVERLAYFS = "54 27 0:46 / /t/g rw - fuse.fuse-overlayfs fuse-overlayfs rw,user_id=0"
SHARED = "55 27 0:47 / /t/s rw shared:12 master:3 - overlay overlay rw,lowerdir=/t/a"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/plain", "/plain"),
        ("a\\040b", "a b"),
        ("tab\\011x", "tab\tx"),
        ("back\\134slash", "back\\slash"),
        ("comma\\054", "comma,"),
        ("not\\08", "not\\08"),
    ],
)
def test_unescape_octal(text: str, expected: str) -> None:
    assert unescape_octal(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("/a\\,b", "/a,b"), ("/a\\:b", "/a:b"), ("/a\\\\b", "/a\\b"), ("/trailing\\", "/trailing\\")],
)
def test_unescape_layer_path(text: str, expected: str) -> None:
    assert unescape_layer_path(text) == expected


@pytest.mark.parametrize(
    ("value", "lowers", "data"),
    [
        ("/a", ("/a",), ()),
        ("/a:/b:/c", ("/a", "/b", "/c"), ()),
        ("/a\\:x:/b\\,y", ("/a:x", "/b,y"), ()),
        ("/a\\\\:/b", ("/a\\", "/b"), ()),
        ("/a:/b::/d1::/d2", ("/a", "/b"), ("/d1", "/d2")),
    ],
)
def test_split_lowerdir(value: str, lowers: tuple[str, ...], data: tuple[str, ...]) -> None:
    assert split_lowerdir(value) == (lowers, data)


def test_parse_line_fields() -> None:
    entry = parse_mountinfo_line(SHARED)
    assert (entry.mount_id, entry.parent_id, entry.device) == (55, 27, "0:47")
    assert entry.optional_fields == ("shared:12", "master:3")
    assert entry.mount_point == "/t/s"
    assert entry.fstype == "overlay"
    assert entry.super_options == ("rw", "lowerdir=/t/a")


@pytest.mark.parametrize(
    "line", ["", "1 2 3", "x 1 0:1 / /m rw - ext4 /dev/x rw", "1 2 0:1 / /m rw"]
)
def test_parse_line_rejects_malformed(line: str) -> None:
    with pytest.raises(MountInfoError):
        parse_mountinfo_line(line)


@pytest.mark.parametrize(
    ("line", "lowers", "upper", "work", "options"),
    [
        (ESCAPED, ("//t/l,1", "/t/l:2", "/t/l 3"), "/t/u", "/t/w", ("uuid=on",)),
        (BACKSLASH_RO, ("/t/l\\4", "/t/l:2"), None, None, ("redirect_dir=on",)),
        (SPACE_MOUNT_POINT, ("/t/a",), "/t/u,x:y z", "/t/w,x:y z", ("uuid=on",)),
        (NEW_API, ("/t/a", "/t/b:c"), None, None, ()),
    ],
)
def test_live_overlay_layers(
    line: str,
    lowers: tuple[str, ...],
    upper: str | None,
    work: str | None,
    options: tuple[str, ...],
) -> None:
    live = live_overlay(parse_mountinfo_line(line))
    assert live is not None
    assert live.backend == "kernel"
    assert live.lowerdirs == lowers
    assert (live.upperdir, live.workdir) == (upper, work)
    assert live.options == options
    assert live.read_only_union is (upper is None)


def test_space_in_mount_point_is_unescaped() -> None:
    assert parse_mountinfo_line(SPACE_MOUNT_POINT).mount_point == "/t/m 2"


def test_data_only_layers() -> None:
    live = live_overlay(parse_mountinfo_line(DATA_ONLY))
    assert live is not None
    assert (live.lowerdirs, live.datadirs) == (("/t/a", "/t/b"), ("/t/data1", "/t/data2"))


def test_read_only_union_is_read_only() -> None:
    live = live_overlay(parse_mountinfo_line(BACKSLASH_RO))
    assert live is not None and live.read_only and live.read_only_union


@pytest.mark.parametrize("line", [FUSE, FUSE_OVERLAYFS])
def test_fuse_overlay_recognised_without_layers(line: str) -> None:
    live = live_overlay(parse_mountinfo_line(line))
    assert live is not None
    assert live.backend == "fuse"
    assert live.lowerdirs is None
    assert not live.read_only_union


@pytest.mark.parametrize(
    ("fstype", "backend"),
    [
        ("overlay", "kernel"),
        ("fuse.lapis-overlay", "fuse"),
        ("fuse.fuse-overlayfs", "fuse"),
        ("fuse.sshfs", None),
        ("ext4", None),
        ("overlayfs", None),
    ],
)
def test_overlay_backend(fstype: str, backend: str | None) -> None:
    assert overlay_backend(fstype) == backend


def test_non_overlay_is_ignored() -> None:
    assert live_overlay(parse_mountinfo_line(ROOT)) is None


def test_list_and_find() -> None:
    text = "\n".join((ROOT, ESCAPED, SPACE_MOUNT_POINT, FUSE, "")) + "\n"
    entries = parse_mountinfo(text)
    assert [o.mount_point for o in list_overlays(entries)] == ["/t/m", "/t/m 2", "/t/f"]
    assert [o.mount_point for o in list_overlays(entries, "/t//m 2/")] == ["/t/m 2"]
    assert list_overlays(entries, "/nowhere") == []
    found = find_mount(entries, "/")
    assert found is not None and found.fstype == "ext4"


def test_find_mount_returns_topmost_of_stacked_mounts() -> None:
    lower = "60 27 0:50 / /t/x rw - tmpfs tmpfs rw"
    upper = "61 60 0:51 / /t/x rw - overlay overlay rw,lowerdir=/t/a"
    found = find_mount(parse_mountinfo(f"{lower}\n{upper}\n"), "/t/x")
    assert found is not None and found.mount_id == 61


def test_to_dict_is_plain_data() -> None:
    live = live_overlay(parse_mountinfo_line(ESCAPED))
    assert live is not None
    facts = live.to_dict()
    assert facts["lowerdirs"] == ["//t/l,1", "/t/l:2", "/t/l 3"]
    assert facts["read_only"] is False
    assert facts["mount_options"] == ["rw", "relatime"]
