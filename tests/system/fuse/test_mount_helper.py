"""The installed daemon through the standard ways in: mount(8), fstab, mount.fuse3.

These install the daemon where a managed host gets it (/usr/local/lib/lapis-layers,
/usr/local/bin/lapis-overlay, /sbin/mount.fuse.lapis-overlay) with this Python, and
remove again whatever they installed.
"""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.fuse_overlay import install, options


@pytest.fixture(scope="module")
def installed() -> Iterator[install.InstallPlan]:
    plan = install.plan_install(sys.executable)
    created = [path for path in plan.changes if not os.path.lexists(path)]
    install.apply_install(plan)
    try:
        yield plan
    finally:
        for path in created:
            Path(path).unlink(missing_ok=True)


def _layers(tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / name for name in ("l0", "l1", "upper", "work", "mnt")}
    for path in paths.values():
        path.mkdir()
    (paths["l1"] / "bottom").write_text("bottom")
    (paths["l0"] / "top").write_text("top")
    return paths


def _options(paths: dict[str, Path], tmp_path: Path) -> str:
    config = options.OverlayConfig(
        str(paths["mnt"]),
        [str(paths["l0"]), str(paths["l1"])],
        str(paths["upper"]),
        str(paths["work"]),
        logfile=str(tmp_path / "daemon.log"),
    )
    return options.format_options(config)


def _fstype(mnt: Path) -> str:
    out = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", str(mnt)], capture_output=True, text=True, check=False
    )
    return out.stdout.strip()


@pytest.fixture
def cleanup(tmp_path: Path) -> Iterator[list[Path]]:
    mounted: list[Path] = []
    yield mounted
    for mnt in mounted:
        state = install.daemon_state(str(mnt))
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)
        if state is not None:
            install.wait_for_exit(state["pid"], timeout=5)


def _check_union_and_unmount(paths: dict[str, Path], tmp_path: Path) -> None:
    mnt = paths["mnt"]
    assert _fstype(mnt) == options.FSTYPE
    assert sorted(p.name for p in mnt.iterdir()) == ["bottom", "top"]
    (mnt / "new").write_text("new")
    (mnt / "bottom").unlink()
    state = install.daemon_state(str(mnt))
    assert state is not None
    assert state["lowerdirs"] == [str(paths["l0"]), str(paths["l1"])]
    subprocess.run(["umount", str(mnt)], check=True)
    assert install.wait_for_exit(state["pid"], timeout=10)
    assert (paths["upper"] / "new").read_text() == "new"
    wh = os.lstat(paths["upper"] / "bottom")
    assert wh.st_rdev == 0 and (wh.st_mode & 0o170000) == 0o020000
    assert "serving" in (tmp_path / "daemon.log").read_text()


def test_mount_t_fuse_type(installed: Any, tmp_path: Path, cleanup: list[Path]) -> None:
    paths = _layers(tmp_path)
    cleanup.append(paths["mnt"])
    cmd = ["mount", "-t", options.FSTYPE, options.SUBTYPE, str(paths["mnt"])]
    subprocess.run([*cmd, "-o", _options(paths, tmp_path)], check=True)
    _check_union_and_unmount(paths, tmp_path)


def test_fstab_entry(installed: Any, tmp_path: Path, cleanup: list[Path]) -> None:
    paths = _layers(tmp_path)
    cleanup.append(paths["mnt"])
    fstab = tmp_path / "fstab"
    opts = _options(paths, tmp_path)
    fstab.write_text(f"{options.SUBTYPE} {paths['mnt']} {options.FSTYPE} {opts},nofail 0 0\n")
    subprocess.run(["mount", "--fstab", str(fstab), str(paths["mnt"])], check=True)
    _check_union_and_unmount(paths, tmp_path)


def test_mount_fuse3_finds_the_subtype_program(
    installed: Any, tmp_path: Path, cleanup: list[Path]
) -> None:
    paths = _layers(tmp_path)
    cleanup.append(paths["mnt"])
    env = dict(os.environ, PATH=f"{Path(installed.launcher).parent}:/usr/sbin:/usr/bin")
    cmd = ["mount.fuse3", "none", str(paths["mnt"]), "-t", options.FSTYPE]
    subprocess.run([*cmd, "-o", _options(paths, tmp_path)], check=True, env=env)
    _check_union_and_unmount(paths, tmp_path)


def test_sigterm_unmounts(installed: Any, tmp_path: Path, cleanup: list[Path]) -> None:
    paths = _layers(tmp_path)
    cleanup.append(paths["mnt"])
    cmd = ["mount", "-t", options.FSTYPE, options.SUBTYPE, str(paths["mnt"])]
    subprocess.run([*cmd, "-o", _options(paths, tmp_path)], check=True)
    state = install.daemon_state(str(paths["mnt"]))
    assert state is not None
    os.kill(state["pid"], signal.SIGTERM)
    assert install.wait_for_exit(state["pid"], timeout=10)
    assert _fstype(paths["mnt"]) == ""
    assert install.daemon_state(str(paths["mnt"])) is None


def test_missing_lowerdir_fails_clearly(installed: Any, tmp_path: Path) -> None:
    paths = _layers(tmp_path)
    opts = f"lowerdir={tmp_path / 'nope'},upperdir={paths['upper']},workdir={paths['work']}"
    cmd = ["mount", "-t", options.FSTYPE, options.SUBTYPE, str(paths["mnt"]), "-o", opts]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert f"{tmp_path / 'nope'} is not a directory" in proc.stderr
    assert _fstype(paths["mnt"]) == ""
