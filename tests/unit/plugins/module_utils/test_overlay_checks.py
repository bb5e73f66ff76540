"""Checks before mounting: each failure names the object and the cause, on real directories."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.mountinfo import (
    parse_mountinfo,
    read_mountinfo,
)
from ansible_collections.lapis.layers.plugins.module_utils.overlay import (
    OverlayError,
    OverlaySpec,
    build_spec,
)
from ansible_collections.lapis.layers.plugins.module_utils.overlay_checks import (
    check_d_type,
    check_kernel,
    check_layers,
    check_nesting,
    check_same_filesystem,
    check_upper_filesystem,
    check_workdir_empty,
    directory_types,
    filesystem_type,
    kernel_has_overlay,
    missing_dirs,
    probe_xattrs,
)


@pytest.fixture
def layers(tmp_path: Path) -> Path:
    for name in ("lower1", "lower2", "upper", "work"):
        (tmp_path / name).mkdir()
    return tmp_path


@pytest.fixture
def other_fs_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on another file system than tmp_path (/dev/shm is a tmpfs)."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("/dev/shm is not available")
    path = Path(tempfile.mkdtemp(prefix="lapis-overlay-unit-", dir="/dev/shm"))
    try:
        if path.stat().st_dev == tmp_path.stat().st_dev:
            pytest.skip("/dev/shm is on the same file system as the test's temp dir")
        yield path
    finally:
        path.rmdir()


def spec_for(root: Path, **extra: Any) -> OverlaySpec:
    args: dict[str, Any] = {
        "lowerdirs": [str(root / "lower1"), str(root / "lower2")],
        "upperdir": str(root / "upper"),
        "workdir": str(root / "work"),
    }
    args.update(extra)
    return build_spec(str(root / "merged"), **args)


@pytest.mark.parametrize(
    ("text", "has"),
    [
        ("nodev\tsysfs\nnodev\toverlay\n\text4\n", True),
        ("nodev\tsysfs\n\text4\n", False),
        ("nodev\tfuse.overlay\n", False),
        ("", False),
    ],
)
def test_kernel_has_overlay(text: str, has: bool) -> None:
    assert kernel_has_overlay(text) is has


def test_check_kernel_without_overlay(tmp_path: Path) -> None:
    fake = tmp_path / "filesystems"
    fake.write_text("nodev\tsysfs\n\text4\n")
    with pytest.raises(OverlayError, match="no overlay file system") as caught:
        check_kernel(str(fake))
    assert "modprobe overlay" in caught.value.message()


def test_check_kernel_here() -> None:
    check_kernel()  # this machine's kernel has overlayfs


def test_good_layers_pass(layers: Path) -> None:
    check_layers(spec_for(layers), read_mountinfo(), probe=os.geteuid() == 0)


def test_missing_lower(layers: Path) -> None:
    spec = spec_for(layers, lowerdirs=[str(layers / "lower1"), str(layers / "gone")])
    with pytest.raises(OverlayError, match=r"lowerdir .*/gone does not exist"):
        check_layers(spec, [], probe=False)


def test_lower_is_a_file(layers: Path) -> None:
    (layers / "file").write_text("x")
    spec = spec_for(layers, lowerdirs=[str(layers / "file")])
    with pytest.raises(OverlayError, match="is not a directory"):
        check_layers(spec, [], probe=False)


def test_mount_point_is_a_file(layers: Path) -> None:
    (layers / "merged").write_text("x")
    with pytest.raises(OverlayError, match=r"mount point .*/merged is not a directory"):
        check_layers(spec_for(layers), [], probe=False)


def test_missing_dirs_lists_what_create_dirs_makes(layers: Path) -> None:
    spec = spec_for(layers, upperdir=str(layers / "new-upper"), workdir=str(layers / "work"))
    assert missing_dirs(spec) == [str(layers / "merged"), str(layers / "new-upper")]


@pytest.mark.parametrize(
    ("upper", "work", "message"),
    [
        ("upper", "upper", "is the same directory as upperdir"),
        ("upper", "upper/work", "workdir .* is inside upperdir"),
        ("work/upper", "work", "upperdir .* is inside workdir"),
    ],
)
def test_nesting_is_refused(layers: Path, upper: str, work: str, message: str) -> None:
    (layers / upper).mkdir(parents=True, exist_ok=True)
    (layers / work).mkdir(parents=True, exist_ok=True)
    with pytest.raises(OverlayError, match=message):
        check_nesting(str(layers / upper), str(layers / work))


def test_siblings_with_common_prefix_are_not_nested(tmp_path: Path) -> None:
    (tmp_path / "up").mkdir()
    (tmp_path / "upper").mkdir()
    check_nesting(str(tmp_path / "up"), str(tmp_path / "upper"))


def test_different_filesystems(layers: Path, other_fs_dir: Path) -> None:
    with pytest.raises(OverlayError, match="on different file systems") as caught:
        check_same_filesystem(str(layers / "upper"), str(other_fs_dir))
    assert "same file system" in caught.value.hint


def test_workdir_not_empty(layers: Path) -> None:
    (layers / "work" / "leftover.txt").write_text("x")
    with pytest.raises(OverlayError, match=r"workdir .* is not empty \(it contains leftover.txt\)"):
        check_workdir_empty(str(layers / "work"))


def test_workdir_with_overlay_leftovers_is_fine(layers: Path) -> None:
    (layers / "work" / "work").mkdir()
    (layers / "work" / "index").mkdir()
    check_workdir_empty(str(layers / "work"))


def test_filesystem_type_from_mount_table(tmp_path: Path) -> None:
    st = tmp_path.stat()
    device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    entries = parse_mountinfo(f"1 0 {device} / /x rw - vfat /dev/sdz1 rw\n")
    assert filesystem_type(str(tmp_path), entries) == "vfat"
    with pytest.raises(OverlayError, match="vfat file system, which overlayfs cannot use"):
        check_upper_filesystem(str(tmp_path), entries)
    assert filesystem_type(str(tmp_path), []) is None
    check_upper_filesystem(str(tmp_path), [])


@pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* extended attributes need root")
def test_probe_xattrs_on_a_real_upper(layers: Path) -> None:
    probe_xattrs(str(layers / "upper"), str(layers / "work"), "trusted")
    assert list((layers / "work").iterdir()) == []


def test_probe_reports_missing_xattr_support(layers: Path) -> None:
    # /proc does not take extended attributes; the probe file itself cannot be made there,
    # so the error names the workdir.
    with pytest.raises(OverlayError, match="workdir /proc"):
        probe_xattrs(str(layers / "upper"), "/proc", "trusted")


def test_directory_types_match_the_entries(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to("file")
    types = directory_types(str(tmp_path))
    assert types is not None
    # DT_DIR, DT_REG, DT_LNK from dirent.h; ext4 and tmpfs fill d_type in.
    assert {name: types[name] for name in ("sub", "file", "link")} == {
        "sub": 4,
        "file": 8,
        "link": 10,
    }


def test_d_type_check_passes_and_cleans_up(layers: Path) -> None:
    check_d_type(str(layers / "upper"), str(layers / "work"))
    assert list((layers / "work").iterdir()) == []


def test_directory_types_of_a_missing_directory(tmp_path: Path) -> None:
    assert directory_types(str(tmp_path / "missing")) is None
