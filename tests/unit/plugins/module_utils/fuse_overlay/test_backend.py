"""The fuse backend of overlay_mount: commands, fstab entry, options, auto, live state."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.fuse_overlay import backend, options
from ansible_collections.lapis.layers.plugins.module_utils.mountinfo import LiveOverlay
from ansible_collections.lapis.layers.plugins.module_utils.overlay import OverlayError, build_spec

SPEC = build_spec("/m", ["/l1", "/l2"], "/u", "/w", ["nosuid", "nofail", "userxattr"])


def _live(fstype: str, kind: str) -> LiveOverlay:
    return LiveOverlay(
        mount_point="/m",
        backend=kind,
        fstype=fstype,
        source="x",
        lowerdirs=None,
        datadirs=(),
        upperdir=None,
        workdir=None,
        options=(),
        mount_options=("rw",),
    )


def test_mount_argv_is_mount_t_fuse_type_with_kernel_options() -> None:
    fuse = backend.FuseOverlay("/bin/mount", logfile="/log/f.log")
    argv = fuse.mount_argv(SPEC)
    assert argv[:3] == ["/bin/mount", "-t", "fuse.lapis-overlay"]
    assert argv[-2:] == ["lapis-overlay", "/m"]
    text = argv[4]
    assert text.startswith("lowerdir=/l1:/l2,upperdir=/u,workdir=/w,userxattr,logfile=/log/f.log")
    assert "nosuid" in text.split(",")
    assert "nofail" not in text.split(",")


def test_fstab_entry_carries_fstab_only_options() -> None:
    entry = backend.FuseOverlay().fstab_entry(SPEC)
    assert (entry.source, entry.fstype) == ("lapis-overlay", "fuse.lapis-overlay")
    assert entry.options.endswith(",nofail")
    assert f"logfile={options.default_logfile('/m')}" in entry.options


def test_unmount_waits_for_the_daemon_and_remount_skips_the_helper() -> None:
    fuse = backend.FuseOverlay("mount", launcher="/bin/lapis-overlay")
    assert fuse.unmount_argv("/m") == ["/bin/lapis-overlay", "--unmount", "/m"]
    assert fuse.remount_argv("/m", ("ro",))[:2] == ["mount", "-i"]


def test_overlay_options_without_fuse_meaning_are_refused() -> None:
    spec = build_spec("/m", ["/l1"], "/u", "/w", ["metacopy=on"])
    with pytest.raises(OverlayError, match="metacopy=on is not supported by the fuse backend"):
        backend.FuseOverlay().mount_argv(spec)


def test_read_only_union_is_mounted_ro() -> None:
    spec = build_spec("/m", ["/l1", "/l2"], None, None, [])
    assert "ro" in backend.FuseOverlay().option_string(spec).split(",")


def test_auto_keeps_the_live_backend() -> None:
    def fail() -> None:
        raise AssertionError("no checks for a live mount")

    assert backend.choose_backend("auto", _live("overlay", "kernel"), fail)[0] == "kernel"
    live = _live("fuse.lapis-overlay", "fuse")
    assert backend.choose_backend("auto", live, fail)[0] == "fuse"
    assert backend.choose_backend("fuse", None, fail) == ("fuse", "backend=fuse was asked for")


@pytest.mark.skipif(os.geteuid() != 0, reason="auto picks fuse for non-root before any check")
def test_auto_uses_the_kernel_unless_its_checks_fail() -> None:
    assert backend.choose_backend("auto", None, lambda: None)[0] == "kernel"

    def no_overlay() -> None:
        raise OverlayError("the kernel has no overlay file system")

    name, why = backend.choose_backend("auto", None, no_overlay)
    assert name == "fuse"
    assert "the kernel has no overlay file system" in why


def test_describe_live_reads_the_daemon_state(tmp_path: Path) -> None:
    state = {
        "pid": os.getpid(),
        "mountpoint": "/m",
        "lowerdirs": ["/l1", "/l2"],
        "upperdir": "/u",
        "workdir": "/w",
        "userxattr": True,
    }
    Path(options.state_paths("/m", str(tmp_path))[1]).write_text(json.dumps(state))
    live = backend.describe_live(_live("fuse.lapis-overlay", "fuse"), str(tmp_path))
    assert live is not None
    assert live.lowerdirs == ("/l1", "/l2")
    assert (live.upperdir, live.workdir, live.options) == ("/u", "/w", ("userxattr",))
    other = _live("fuse.fuse-overlayfs", "fuse")
    assert backend.describe_live(other, str(tmp_path)) is other
