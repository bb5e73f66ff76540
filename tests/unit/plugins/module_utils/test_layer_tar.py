"""Layer extraction: the safety policy (one test per threat), formats and preservation.

The process is root (the test skips otherwise where it matters); every layer is a
real tar written into ``tmp_path`` and extracted onto the real filesystem.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from ansible_collections.lapis.layers.plugins.module_utils import layer_stream
from ansible_collections.lapis.layers.plugins.module_utils.layer_policy import (
    OPAQUE,
    WHITEOUT,
    LayerError,
    hardlink_target,
    member_path,
    member_xattrs,
    whiteout_kind,
)
from ansible_collections.lapis.layers.plugins.module_utils.layer_tar import (
    detect_compression,
    extract_layer,
    flatten_blobs,
    flatten_layers,
    open_layer_stream,
)
from ansible_collections.lapis.layers.tests.system.layers.tree_snapshot import (
    hardlink_groups,
    snapshot,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="ownership and devices need root")
MTIME = 1_600_000_000


# -- building layer tars ----------------------------------------------------------------


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs: object):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = MTIME
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def d(name: str, **attrs: object):
    return member(name, tarfile.DIRTYPE, b"", **attrs)


def f(name: str, data: bytes = b"", **attrs: object):
    return member(name, tarfile.REGTYPE, data, **attrs)


def sym(name: str, target: str):
    return member(name, tarfile.SYMTYPE, linkname=target)


def hard(name: str, target: str):
    return member(name, tarfile.LNKTYPE, linkname=target)


def tar_bytes(members: list, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def write_layer(path: Path, members: list, compression: str = "none") -> Path:
    raw = tar_bytes(members)
    if compression == "gzip":
        raw = gzip.compress(raw)
    elif compression == "zstd":
        raw = zstandard.ZstdCompressor().compress(raw)
    path.write_bytes(raw)
    return path


@pytest.fixture
def layer(tmp_path: Path):
    counter = iter(range(1000))

    def make(members: list, compression: str = "none") -> str:
        return str(write_layer(tmp_path / f"layer-{next(counter)}.tar", members, compression))

    return make


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the root that no extraction may touch."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "keep").write_text("precious")
    return path


# -- the policy as pure functions -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("./etc/passwd", "etc/passwd"),
        ("etc/passwd", "etc/passwd"),
        ("/etc/passwd", "etc/passwd"),
        ("//etc//passwd", "etc/passwd"),
        ("a/../b", "b"),
        (".", ""),
        ("./", ""),
        ("./a/b", "a/b"),
        ("a/./b", "a/b"),
        ("a/.hidden", "a/.hidden"),
        (".bashrc", ".bashrc"),
        ("dir/", "dir"),
        ("./.wh.x", ".wh.x"),
    ],
)
def test_member_path_normalised_inside_root(name: str, path: str) -> None:
    assert member_path(name) == path


@pytest.mark.parametrize("name", ["..", "../x", "etc/../../x", "/../x", "a/b/../../../x"])
def test_dotdot_member_path_refused(name: str) -> None:
    with pytest.raises(LayerError, match="path escapes the root") as caught:
        member_path(name)
    assert caught.value.member == name


def test_nul_in_member_name_refused() -> None:
    with pytest.raises(LayerError, match="NUL"):
        member_path("a\x00b")


def test_layer_error_names_member() -> None:
    err = LayerError("etc/../../x", "path escapes the root")
    assert str(err) == "layer member 'etc/../../x': path escapes the root"
    assert (err.member, err.reason) == ("etc/../../x", "path escapes the root")
    assert str(LayerError(None, "truncated")) == "layer: truncated"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a/b", None),
        (".wh.foo", (WHITEOUT, "foo")),
        ("a/.wh.foo", (WHITEOUT, "a/foo")),
        ("a/.wh..wh..opq", (OPAQUE, "a")),
        (".wh..wh..opq", (OPAQUE, "")),
        ("a/.wh..hidden", (WHITEOUT, "a/.hidden")),
    ],
)
def test_whiteout_kind(path: str, expected: tuple[str, str] | None) -> None:
    assert whiteout_kind(path, path) == expected


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        (".wh.", "names no entry"),
        ("a/.wh.", "names no entry"),
        ("a/.wh..", "names no entry"),
        ("a/.wh...", "names no entry"),
        ("a/.wh..wh.plnk", "reserved"),
    ],
)
def test_whiteout_outside_directory_kind_refused(path: str, reason: str) -> None:
    with pytest.raises(LayerError, match=reason):
        whiteout_kind(path, path)


@pytest.mark.parametrize("target", ["../etc/shadow", "a/../../etc/shadow", "/../x", ""])
def test_hardlink_target_outside_refused(target: str) -> None:
    with pytest.raises(LayerError) as caught:
        hardlink_target("h", target)
    assert caught.value.member == "h"


def test_hardlink_target_absolute_contained() -> None:
    assert hardlink_target("h", "/etc/passwd") == "etc/passwd"


def test_overlay_xattrs_in_pax_dropped() -> None:
    pax = {
        "SCHILY.xattr.user.a": "1",
        "SCHILY.xattr.trusted.overlay.redirect": "/x",
        "SCHILY.xattr.trusted.overlay.opaque": "y",
        "SCHILY.xattr.security.capability": "\udc81\x00",
        "mtime": "1",
    }
    assert member_xattrs(pax) == {"user.a": b"1", "security.capability": b"\x81\x00"}


# -- threats, end to end ---------------------------------------------------------------------


def test_dotdot_member_refused(tmp_path: Path, layer) -> None:
    blob = layer([d("etc"), f("etc/../../x", b"evil")])
    with pytest.raises(LayerError, match=r"layer member 'etc/../../x': path escapes the root"):
        extract_layer(blob, str(tmp_path / "root"))
    assert not (tmp_path / "x").exists()


def test_absolute_member_contained(tmp_path: Path, layer) -> None:
    target = tmp_path / "abs-target"
    blob = layer([f(str(target), b"inside")])
    extract_layer(blob, str(tmp_path / "root"))
    assert not target.exists()
    assert (tmp_path / "root" / str(target).lstrip("/")).read_bytes() == b"inside"


@pytest.mark.parametrize("mode", ["overlay", "flat"])
@pytest.mark.parametrize("link", ["absolute", "relative"])
def test_symlink_parent_escape_contained(tmp_path: Path, layer, outside: Path, mode, link) -> None:
    target = str(outside) if link == "absolute" else "../" * 20 + str(outside).lstrip("/")
    root = tmp_path / "root"
    root.mkdir()
    extract_layer(layer([sym("esc", target), f("esc/pwned", b"x")]), str(root), mode=mode)
    assert sorted(p.name for p in outside.iterdir()) == ["keep"]
    assert (root / str(outside).lstrip("/") / "pwned").read_bytes() == b"x"


def test_symlink_lower_layer_escape_contained(tmp_path: Path, layer, outside: Path) -> None:
    root = tmp_path / "root"
    flatten_blobs([layer([sym("lib", str(outside))]), layer([f("lib/pwned", b"x")])], str(root))
    assert sorted(p.name for p in outside.iterdir()) == ["keep"]
    assert (root / "lib").is_symlink()
    assert (root / str(outside).lstrip("/") / "pwned").read_bytes() == b"x"


def test_symlink_dotdot_chain_contained(tmp_path: Path, layer, outside: Path) -> None:
    root = tmp_path / "root"
    blob = layer([d("a"), sym("a/up", ".."), sym("a/upup", "up/../.."), f("a/upup/x", b"x")])
    extract_layer(blob, str(root), mode="overlay")
    assert (root / "x").read_bytes() == b"x"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "links", [[("a", "b"), ("b", "a")], [("a", "a")], [("a", "b/x"), ("b", "/a")]]
)
def test_symlink_loop_refused(tmp_path: Path, layer, links: list[tuple[str, str]]) -> None:
    blob = layer([sym(name, target) for name, target in links] + [f("a/file", b"x")])
    with pytest.raises(LayerError, match="symlink loop") as caught:
        extract_layer(blob, str(tmp_path / "root"))
    assert caught.value.member == "a/file"


def test_hardlink_outside_refused(tmp_path: Path, layer) -> None:
    blob = layer([hard("h", "../../../etc/passwd")])
    with pytest.raises(LayerError, match="outside the root"):
        extract_layer(blob, str(tmp_path / "root"))


def test_hardlink_through_symlink_contained(tmp_path: Path, layer, outside: Path) -> None:
    blob = layer([sym("l", str(outside)), hard("h", "l/keep")])
    with pytest.raises(LayerError, match="does not exist") as caught:
        extract_layer(blob, str(tmp_path / "root"))
    assert caught.value.member == "h"
    assert (outside / "keep").stat().st_nlink == 1


def test_hardlink_to_directory_refused(tmp_path: Path, layer) -> None:
    with pytest.raises(LayerError, match="is a directory"):
        extract_layer(layer([d("dir"), hard("h", "dir")]), str(tmp_path / "root"))


@pytest.mark.parametrize("name", [".wh.", "a/.wh.", "a/.wh..", "a/.wh..."])
def test_whiteout_outside_directory_refused(tmp_path: Path, layer, outside: Path, name) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").mkdir()
    blob = layer([d("a"), f(name)])
    with pytest.raises(LayerError) as caught:
        extract_layer(blob, str(root), mode="flat")
    assert caught.value.member == name
    assert (root / "a").is_dir()
    assert (outside / "keep").exists()


def test_bare_whiteout_refused(tmp_path: Path, layer) -> None:
    with pytest.raises(LayerError, match=r"layer member '\.wh\.': whiteout names no entry"):
        extract_layer(layer([f(".wh.")]), str(tmp_path / "root"))


def test_whiteout_through_symlink_contained(tmp_path: Path, layer, outside: Path) -> None:
    root = tmp_path / "root"
    flatten_blobs([layer([sym("l", str(outside))]), layer([f("l/.wh.keep")])], str(root))
    assert (outside / "keep").read_text() == "precious"


def test_opaque_through_symlink_contained(tmp_path: Path, layer, outside: Path) -> None:
    root = tmp_path / "root"
    flatten_blobs([layer([sym("l", str(outside))]), layer([f("l/.wh..wh..opq")])], str(root))
    assert (outside / "keep").read_text() == "precious"


def test_file_over_symlink_not_followed(tmp_path: Path, layer, outside: Path) -> None:
    root = tmp_path / "root"
    blobs = [layer([sym("f", str(outside / "keep"))]), layer([f("f", b"new")])]
    flatten_blobs(blobs, str(root))
    assert (outside / "keep").read_text() == "precious"
    assert (root / "f").read_bytes() == b"new"
    assert not (root / "f").is_symlink()


def test_directory_over_symlink_not_followed(tmp_path: Path, layer, outside: Path) -> None:
    root = tmp_path / "root"
    before = outside.stat()
    blobs = [layer([sym("d", str(outside))]), layer([d("d", mode=0o700, uid=99)])]
    flatten_blobs(blobs, str(root))
    after = outside.stat()
    assert (after.st_mode, after.st_uid) == (before.st_mode, before.st_uid)
    assert (root / "d").is_dir() and not (root / "d").is_symlink()
    assert not (root / "d" / "keep").exists()


def test_parent_that_is_a_file_refused(tmp_path: Path, layer) -> None:
    with pytest.raises(LayerError, match="not a directory") as caught:
        extract_layer(layer([f("a", b"x"), f("a/b", b"y")]), str(tmp_path / "root"))
    assert caught.value.member == "a/b"


def test_overlay_xattr_smuggling_dropped(tmp_path: Path, layer) -> None:
    pax = {"SCHILY.xattr.trusted.overlay.redirect": "/etc", "SCHILY.xattr.user.ok": "1"}
    result = extract_layer(layer([d("a", pax_headers=pax)]), str(tmp_path / "root"))
    names = os.listxattr(tmp_path / "root" / "a")
    assert "trusted.overlay.redirect" not in names
    assert "user.ok" in names
    assert any("trusted.overlay" in warning for warning in result.warnings)


def test_overlay_destination_not_empty_refused(tmp_path: Path, layer) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "stale").write_text("x")
    with pytest.raises(LayerError, match="not empty"):
        extract_layer(layer([f("a")]), str(root))


def test_unknown_mode_refused(tmp_path: Path, layer) -> None:
    with pytest.raises(LayerError, match="unknown extraction mode"):
        extract_layer(layer([f("a")]), str(tmp_path / "root"), mode="merge")


# -- whiteouts and opaque directories --------------------------------------------------------


def test_overlay_whiteout_becomes_char_device(tmp_path: Path, layer) -> None:
    root = tmp_path / "root"
    extract_layer(layer([d("a"), f("a/.wh.gone"), f(".wh.top")]), str(root))
    for path in (root / "a" / "gone", root / "top"):
        st = path.lstat()
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert not list(root.rglob(".wh.*"))


def test_overlay_opaque_becomes_xattr(tmp_path: Path, layer) -> None:
    root = tmp_path / "root"
    extract_layer(layer([d("a"), f("a/.wh..wh..opq"), f("a/new", b"n")]), str(root))
    assert os.getxattr(root / "a", "trusted.overlay.opaque") == b"y"
    assert sorted(p.name for p in (root / "a").iterdir()) == ["new"]


def test_overlay_opaque_before_its_directory(tmp_path: Path, layer) -> None:
    root = tmp_path / "root"
    extract_layer(layer([f("a/.wh..wh..opq"), d("a", mode=0o750)]), str(root))
    assert os.getxattr(root / "a", "trusted.overlay.opaque") == b"y"
    assert stat.S_IMODE((root / "a").stat().st_mode) == 0o750


def test_flat_whiteout_deletes_lower(tmp_path: Path, layer) -> None:
    root = tmp_path / "root"
    lower = layer([d("a"), f("a/file", b"1"), d("a/sub"), f("a/sub/deep", b"2"), f("b", b"b")])
    upper = layer([f("a/.wh.file"), f("a/.wh.sub"), f(".wh.b")])
    flatten_blobs([lower, upper], str(root))
    assert snapshot(root, xattrs=False).keys() == {"a"}


@pytest.mark.parametrize("marker_first", [True, False])
def test_flat_opaque_keeps_same_layer_entries(tmp_path: Path, layer, marker_first) -> None:
    root = tmp_path / "root"
    lower = layer([d("a"), f("a/old", b"1"), d("a/sub"), f("a/sub/old", b"2"), f("a/sub/x")])
    marker = [f("a/.wh..wh..opq")]
    same = [d("a"), d("a/sub"), f("a/sub/new", b"3"), f("a/top", b"4")]
    upper = layer(marker + same if marker_first else same + marker)
    flatten_blobs([lower, upper], str(root))
    assert sorted(snapshot(root, xattrs=False)) == ["a", "a/sub", "a/sub/new", "a/top"]


def test_flat_whiteout_spares_same_layer_entry(tmp_path: Path, layer) -> None:
    root = tmp_path / "root"
    flatten_blobs([layer([f("x", b"old")]), layer([f("x", b"new"), f(".wh.x")])], str(root))
    assert (root / "x").read_bytes() == b"new"


def test_flat_type_change_replaces_directory(tmp_path: Path, layer) -> None:
    root = tmp_path / "root"
    lower = layer([d("p"), f("p/child", b"c"), f("q", b"file")])
    upper = layer([f("p", b"now a file"), d("q"), f("q/inside", b"i")])
    flatten_blobs([lower, upper], str(root))
    assert (root / "p").read_bytes() == b"now a file"
    assert (root / "q" / "inside").read_bytes() == b"i"


def test_flatten_layers_matches_flatten_blobs(tmp_path: Path, layer) -> None:
    blobs = [
        layer([d("a"), f("a/one", b"1"), d("b"), f("b/two", b"2"), f("c", b"c")]),
        layer([d("a"), f("a/.wh.one"), d("b"), f("b/.wh..wh..opq"), f("b/three", b"3")]),
        layer([f("h1", b"hh"), hard("h2", "h1")]),
        layer([f(".wh.c"), d("c"), f("c/four", b"4"), sym("s", "/a")]),
    ]
    dirs = []
    for index, blob in enumerate(blobs):
        dirs.append(str(tmp_path / f"overlay-{index}"))
        extract_layer(blob, dirs[-1])
    flatten_layers(dirs, str(tmp_path / "from-dirs"))
    flatten_blobs(blobs, str(tmp_path / "from-blobs"))
    from_dirs = snapshot(tmp_path / "from-dirs", mtime=True)
    assert from_dirs == snapshot(tmp_path / "from-blobs", mtime=True)
    assert sorted(from_dirs) == ["a", "b", "b/three", "c", "c/four", "h1", "h2", "s"]


# -- streams and digests ---------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_diff_id_and_compressed_digest(tmp_path: Path, layer, compression: str) -> None:
    members = [d("a"), f("a/data", os.urandom(300_000)), f("b", b"b" * 4096)]
    blob = layer(members, compression)
    result = extract_layer(blob, str(tmp_path / "root"))
    raw = tar_bytes(members)
    assert result.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    stored = Path(blob).read_bytes()
    assert result.compressed_digest == "sha256:" + hashlib.sha256(stored).hexdigest()
    assert (result.size, result.entries, result.compression) == (len(raw), 3, compression)
    assert detect_compression(blob) == compression


def test_gzip_without_binary_uses_zlib(tmp_path: Path, layer, monkeypatch) -> None:
    members = [f("x", os.urandom(200_000))]
    blob = layer(members, "gzip")
    Path(blob).write_bytes(Path(blob).read_bytes() + gzip.compress(b"\0" * 1024))
    monkeypatch.setattr(layer_stream.shutil, "which", lambda _name: None)
    result = extract_layer(blob, str(tmp_path / "root"))
    raw = tar_bytes(members) + b"\0" * 1024
    assert result.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()


def test_zstd_without_package_uses_binary(tmp_path: Path, layer, monkeypatch) -> None:
    members = [f("x", os.urandom(200_000))]
    blob = layer(members, "zstd")
    monkeypatch.setattr(layer_stream, "HAS_ZSTANDARD", False)
    result = extract_layer(blob, str(tmp_path / "root"))
    assert result.diff_id == "sha256:" + hashlib.sha256(tar_bytes(members)).hexdigest()
    assert (tmp_path / "root" / "x").stat().st_size == 200_000


def test_open_layer_stream_decompresses(layer) -> None:
    members = [f("x", b"hello")]
    stream = open_layer_stream(layer(members, "gzip"))
    try:
        assert stream.read(1 << 20) == tar_bytes(members)[: 1 << 20]
    finally:
        stream.close()


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_truncated_compressed_blob_fails(tmp_path: Path, layer, compression: str) -> None:
    blob = Path(layer([f("x", os.urandom(100_000))], compression))
    blob.write_bytes(blob.read_bytes()[:-200])
    with pytest.raises(LayerError):
        extract_layer(str(blob), str(tmp_path / "root"))


def test_truncated_plain_tar_at_member_boundary_fails(tmp_path: Path, layer) -> None:
    blob = Path(layer([f("x", b"a" * 512), f("y", b"b" * 512)]))
    blob.write_bytes(blob.read_bytes()[: 512 * 4])
    with pytest.raises(LayerError, match="truncated"):
        extract_layer(str(blob), str(tmp_path / "root"))


def test_truncated_plain_tar_inside_data_fails(tmp_path: Path, layer) -> None:
    blob = Path(layer([f("x", b"a" * 100_000)]))
    blob.write_bytes(blob.read_bytes()[:50_000])
    with pytest.raises(LayerError, match=r"truncated|unexpected end"):
        extract_layer(str(blob), str(tmp_path / "root"))


def test_corrupt_gzip_fails(tmp_path: Path) -> None:
    blob = tmp_path / "bad.tar.gz"
    blob.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(4000))
    with pytest.raises(LayerError, match="gzip"):
        extract_layer(str(blob), str(tmp_path / "root"))


def test_not_a_tar_fails(tmp_path: Path) -> None:
    blob = tmp_path / "junk"
    blob.write_bytes(b"junk" * 1000)
    with pytest.raises(LayerError, match="not a valid tar"):
        extract_layer(str(blob), str(tmp_path / "root"))


# -- preservation as root ----------------------------------------------------------------------


@needs_root
def test_ownership_modes_and_mtimes_preserved(tmp_path: Path, layer) -> None:
    root = tmp_path / "root"
    members = [
        d("dir", mode=0o1777, uid=7, gid=8, mtime=1_000_000),
        f("dir/suid", b"x", mode=0o4755, uid=1234, gid=5678, mtime=2_000_000),
        f("dir/sgid", b"y", mode=0o2711, uid=0, gid=50, uname="nosuch", gname="nosuch"),
        sym("dir/link", "/nowhere"),
    ]
    members[3][0].uid, members[3][0].gid = 42, 43
    extract_layer(layer(members), str(root))
    st = (root / "dir").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o1777, 7, 8)
    assert st.st_mtime == 1_000_000
    st = (root / "dir" / "suid").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o4755, 1234, 5678)
    assert st.st_mtime == 2_000_000
    st = (root / "dir" / "sgid").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o2711, 0, 50)
    st = (root / "dir" / "link").lstat()
    assert (st.st_uid, st.st_gid, st.st_mtime) == (42, 43, MTIME)


@needs_root
def test_xattrs_preserved(tmp_path: Path, layer) -> None:
    pax = {"SCHILY.xattr.user.colour": "blue", "SCHILY.xattr.trusted.bin": "\udcff\x00\x01"}
    members = [f("file", b"x", pax_headers=pax), d("dir", pax_headers={"SCHILY.xattr.user.d": "1"})]
    extract_layer(layer(members), str(tmp_path / "root"))
    assert os.getxattr(tmp_path / "root" / "file", "user.colour") == b"blue"
    assert os.getxattr(tmp_path / "root" / "file", "trusted.bin") == b"\xff\x00\x01"
    assert os.getxattr(tmp_path / "root" / "dir", "user.d") == b"1"


@needs_root
def test_devices_fifos_and_hardlinks_preserved(tmp_path: Path, layer) -> None:
    root = tmp_path / "root"
    members = [
        member("null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
        member("loop9", tarfile.BLKTYPE, devmajor=7, devminor=9, mode=0o660, gid=6),
        member("pipe", tarfile.FIFOTYPE, mode=0o620),
        f("orig", b"shared", mode=0o640),
        hard("again", "orig"),
        hard("./third", "/orig"),
    ]
    extract_layer(layer(members), str(root))
    snap = snapshot(root, xattrs=False)
    assert snap["null"] == {"type": "char", "mode": "0o666", "owner": "0:0", "device": "1:3"}
    assert snap["loop9"] == {"type": "block", "mode": "0o660", "owner": "0:6", "device": "7:9"}
    assert snap["pipe"] == {"type": "fifo", "mode": "0o620", "owner": "0:0"}
    assert hardlink_groups(root) == [["again", "orig", "third"]]


def test_unsupported_xattr_warned_once(tmp_path: Path, layer) -> None:
    pax = {"SCHILY.xattr.user.on-symlink": "1"}
    links = [member(f"l{n}", tarfile.SYMTYPE, linkname="x", pax_headers=pax) for n in range(3)]
    result = extract_layer(layer(links), str(tmp_path / "root"))
    assert len(result.warnings) == 1
    assert "user.*" in result.warnings[0]
    assert "'l0'" in result.warnings[0]


def test_flatten_layers_root_opaque(tmp_path: Path, layer) -> None:
    dirs = [str(tmp_path / "l0"), str(tmp_path / "l1")]
    extract_layer(layer([f("old", b"1"), d("keepdir")]), dirs[0])
    extract_layer(layer([f(".wh..wh..opq"), f("new", b"2")]), dirs[1])
    assert os.getxattr(dirs[1], "trusted.overlay.opaque") == b"y"
    flatten_layers(dirs, str(tmp_path / "flat"))
    assert sorted(snapshot(tmp_path / "flat")) == ["new"]
    blobs = [layer([f("old", b"1")]), layer([f(".wh..wh..opq"), f("new", b"2")])]
    flatten_blobs(blobs, str(tmp_path / "flat-blobs"))
    assert sorted(snapshot(tmp_path / "flat-blobs")) == ["new"]


def test_directory_mtime_set_after_contents(tmp_path: Path, layer) -> None:
    root = tmp_path / "root"
    extract_layer(layer([d("a", mtime=1234), d("a/b", mtime=5678), f("a/b/c", b"x")]), str(root))
    assert (root / "a").stat().st_mtime == 1234
    assert (root / "a" / "b").stat().st_mtime == 5678


def test_header_mode_type_bits_masked(tmp_path: Path, layer) -> None:
    extract_layer(layer([f("test", b"hello\n", mode=0o100640)]), str(tmp_path / "root"))
    assert stat.S_IMODE((tmp_path / "root" / "test").stat().st_mode) == 0o640


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_and_link_targets(tmp_path: Path, fmt: int) -> None:
    deep = "/".join(["d" * 60] * 5)
    members = [f(deep + "/" + "n" * 120, b"long"), sym("s", "t" * 300)]
    blob = tmp_path / "long.tar"
    blob.write_bytes(tar_bytes(members, fmt))
    extract_layer(str(blob), str(tmp_path / "root"))
    assert (tmp_path / "root" / deep / ("n" * 120)).read_bytes() == b"long"
    assert str((tmp_path / "root" / "s").readlink()) == "t" * 300


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_sparse_file(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as sparse:
        sparse.seek(5_000_000)
        sparse.write(b"middle")
        sparse.seek(9_000_000)
        sparse.write(b"end")
    blob = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", "--sparse", f"--format={fmt}", "-cf", str(blob), "-C", str(src), "sparse"],
        check=True,
    )
    extract_layer(str(blob), str(tmp_path / "root"))
    out = tmp_path / "root" / "sparse"
    assert out.read_bytes() == (src / "sparse").read_bytes()
    assert out.stat().st_blocks * 512 < 1_000_000


# -- the tar reader's formats ------------------------------------------------------------------


@needs_root
def test_base256_owner_preserved(tmp_path: Path) -> None:
    blob = tmp_path / "big-uid.tar"
    blob.write_bytes(tar_bytes([f("x", b"x", uid=3_000_000, gid=4_000_000)], tarfile.GNU_FORMAT))
    extract_layer(str(blob), str(tmp_path / "root"))
    st = (tmp_path / "root" / "x").stat()
    assert (st.st_uid, st.st_gid) == (3_000_000, 4_000_000)


@needs_root
def test_pax_global_header_applies_to_members(tmp_path: Path) -> None:
    blob = tmp_path / "global.tar"
    with tarfile.open(blob, "w", format=tarfile.PAX_FORMAT, pax_headers={"uid": "77"}) as tar:
        info, data = f("x", b"x")
        tar.addfile(info, io.BytesIO(data))
    extract_layer(str(blob), str(tmp_path / "root"))
    assert (tmp_path / "root" / "x").stat().st_uid == 77


def test_corrupt_header_refused(tmp_path: Path) -> None:
    raw = bytearray(tar_bytes([f("a", b"a" * 10), f("b", b"b")]))
    raw[1024 + 5] ^= 0x55  # the second header's name, so its checksum no longer matches
    blob = tmp_path / "corrupt.tar"
    blob.write_bytes(bytes(raw))
    with pytest.raises(LayerError, match="bad header at offset 1024"):
        extract_layer(str(blob), str(tmp_path / "root"))


def test_unknown_member_type_is_a_plain_file(tmp_path: Path) -> None:
    blob = tmp_path / "odd.tar"
    with tarfile.open(blob, "w", format=tarfile.USTAR_FORMAT) as tar:
        info, _data = member("odd", b"Z", size=4)
        tar.addfile(info, io.BytesIO(b"data"))
        after, data = f("after", b"next")
        tar.addfile(after, io.BytesIO(data))
    extract_layer(str(blob), str(tmp_path / "root"))
    assert (tmp_path / "root" / "odd").read_bytes() == b"data"
    assert (tmp_path / "root" / "after").read_bytes() == b"next"
