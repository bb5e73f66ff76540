"""The union core without FUSE: resolution, copy-up and the kernel's on-disk format.

These run on real directories in tmp_path; whiteouts are character devices, so the
tests that make them need root (they skip otherwise).
"""

import errno
import os
import stat
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.fuse_overlay import unionfs
from ansible_collections.lapis.layers.plugins.module_utils.fuse_overlay.options import (
    OverlayConfig,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and chown need root")


def make_core(tmp_path: Path, lowers: int = 2) -> unionfs.UnionCore:
    dirs = [tmp_path / f"l{i}" for i in range(lowers)]
    for path in [*dirs, tmp_path / "u", tmp_path / "w"]:
        path.mkdir()
    config = OverlayConfig("/mnt", [str(d) for d in dirs], str(tmp_path / "u"), str(tmp_path / "w"))
    return unionfs.UnionCore(config)


def test_topmost_layer_wins_and_directories_merge(tmp_path: Path) -> None:
    core = make_core(tmp_path)
    (tmp_path / "l0/d").mkdir()
    (tmp_path / "l1/d").mkdir()
    (tmp_path / "l0/d/a").write_text("top")
    (tmp_path / "l1/d/a").write_text("bottom")
    (tmp_path / "l1/d/b").write_text("only bottom")
    entry = core.require("d")
    assert [layer for layer, _real in entry.dirs] == [1, 2]
    assert core.require("d/a").real == str(tmp_path / "l0/d/a")
    assert sorted(item[0] for item in core.list_dir(entry)) == ["a", "b"]


def test_file_above_directory_hides_it(tmp_path: Path) -> None:
    core = make_core(tmp_path)
    (tmp_path / "l0/x").write_text("file")
    (tmp_path / "l1/x").mkdir()
    (tmp_path / "l1/x/inner").write_text("hidden")
    assert not core.require("x").is_dir
    assert core.resolve("x/inner") is None


@needs_root
def test_whiteout_and_opaque_directory_stop_the_search(tmp_path: Path) -> None:
    core = make_core(tmp_path)
    (tmp_path / "l1/gone").write_text("x")
    os.mknod(tmp_path / "l0/gone", stat.S_IFCHR, 0)
    (tmp_path / "l0/o").mkdir()
    (tmp_path / "l1/o").mkdir()
    (tmp_path / "l1/o/below").write_text("x")
    os.setxattr(tmp_path / "l0/o", "trusted.overlay.opaque", b"y")
    assert core.resolve("gone") is None
    assert core.list_dir(core.require("")) == [
        item for item in core.list_dir(core.require("")) if item[0] != "gone"
    ]
    assert core.resolve("o/below") is None
    assert core.list_dir(core.require("o")) == []


@needs_root
def test_a_listing_resolves_its_files_as_lookups_would(tmp_path: Path) -> None:
    listed = make_core(tmp_path)
    for layer in ("u", "l0", "l1"):
        (tmp_path / layer / "d").mkdir()
        (tmp_path / layer / "d" / f"only-{layer}").write_text(layer)
        (tmp_path / layer / "d" / "shared").write_text(layer)
    (tmp_path / "l1/d/sub").mkdir()
    os.mknod(tmp_path / "l0/d/gone", stat.S_IFCHR, 0)
    (tmp_path / "l1/d/gone").write_text("hidden by the whiteout above")
    (tmp_path / "l0/d/link").symlink_to("shared")
    listed.list_dir(listed.require("d"), "d")
    names = ["only-u", "only-l0", "only-l1", "shared", "sub", "gone", "link", "nothing"]
    looked_up = unionfs.UnionCore(listed.config)
    for name in names:
        assert listed.resolve(f"d/{name}") == looked_up.resolve(f"d/{name}"), name
    assert listed.require("d/shared").real == str(tmp_path / "u/d/shared")


@needs_root
def test_copy_up_preserves_mode_owner_times_xattrs_and_holes(tmp_path: Path) -> None:
    core = make_core(tmp_path)
    (tmp_path / "l1/d").mkdir(mode=0o750)
    src = tmp_path / "l1/d/f"
    with open(src, "wb") as handle:
        handle.seek(4 << 20)
        handle.write(b"tail")
    os.chown(src, 1234, 5678)
    src.chmod(0o4751)
    os.utime(src, ns=(1_000_000_000, 2_000_000_000))
    os.setxattr(src, "user.k", b"v")
    os.setxattr(src, "trusted.overlay.origin", b"private")
    entry = core.copy_up("d/f")
    up = Path(entry.real)
    st = up.lstat()
    assert up == tmp_path / "u/d/f"
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o4751, 1234, 5678)
    assert st.st_mtime_ns == 2_000_000_000
    assert os.getxattr(up, "user.k") == b"v"
    assert "trusted.overlay.origin" not in os.listxattr(up)
    assert up.read_bytes()[-4:] == b"tail"
    assert st.st_blocks * 512 < 1 << 20  # the hole stayed a hole
    assert stat.S_IMODE((tmp_path / "u/d").stat().st_mode) == 0o750
    assert list((tmp_path / "w/work").iterdir()) == []


@needs_root
def test_remove_lower_file_leaves_kernel_whiteout(tmp_path: Path) -> None:
    core = make_core(tmp_path)
    (tmp_path / "l1/f").write_text("x")
    core.remove("f", core.require("f"))
    st = (tmp_path / "u/f").lstat()
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert core.resolve("f") is None


@needs_root
def test_place_over_whiteout_makes_opaque_directory(tmp_path: Path) -> None:
    core = make_core(tmp_path)
    (tmp_path / "l1/d").mkdir()
    (tmp_path / "l1/d/old").write_text("x")
    core.remove("d/old", core.require("d/old"))
    core.remove("d", core.require("d"))
    core.place("d", lambda real: Path(real).mkdir(), opaque=True)
    assert os.getxattr(tmp_path / "u/d", "trusted.overlay.opaque") == b"y"
    assert core.list_dir(core.require("d")) == []


def test_read_only_union_refuses_changes(tmp_path: Path) -> None:
    (tmp_path / "l0").mkdir()
    (tmp_path / "l0/f").write_text("x")
    core = unionfs.UnionCore(OverlayConfig("/mnt", [str(tmp_path / "l0")]))
    with pytest.raises(OSError, match="read-only"):
        core.copy_up("f")


def _read_through_open_real(path: Path, lower: bool) -> bytes:
    fd = unionfs._open_real(str(path), os.O_RDONLY, lower)
    try:
        return os.read(fd, 64)
    finally:
        os.close(fd)


def test_reading_a_lower_file_leaves_its_atime_as_the_kernel_overlay_does(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lower-file"
    path.write_text("data")
    os.utime(path, ns=(10**18, 10**18))  # atime == mtime: relatime would update it
    assert _read_through_open_real(path, lower=True) == b"data"
    assert path.stat().st_atime_ns == 10**18


def test_a_lower_file_the_daemon_may_not_open_noatime_is_opened_plainly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "someone-elses"
    path.write_text("data")
    real_open = os.open
    tried: list[int] = []

    def open_without_fowner(file: str, flags: int, *args: int) -> int:
        tried.append(flags & os.O_NOATIME)
        if flags & os.O_NOATIME:
            raise PermissionError(errno.EPERM, "Operation not permitted", file)
        return real_open(file, flags, *args)

    monkeypatch.setattr(unionfs.os, "open", open_without_fowner)
    assert _read_through_open_real(path, lower=True) == b"data"
    assert tried == [os.O_NOATIME, 0]
