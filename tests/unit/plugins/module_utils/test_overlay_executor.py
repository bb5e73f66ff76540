"""The executor: real commands, real files; a failed step undoes the earlier ones."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.overlay import (
    OverlayError,
    build_spec,
)
from ansible_collections.lapis.layers.plugins.module_utils.overlay_executor import (
    CommandResult,
    KernelOverlay,
    OverlayExecutor,
    command_error,
)
from ansible_collections.lapis.layers.plugins.module_utils.overlay_plan import Action, Plan


def run(argv: list[str]) -> CommandResult:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return CommandResult(proc.returncode, proc.stdout, proc.stderr)


def test_creates_dirs_and_writes_fstab_with_backup(tmp_path: Path) -> None:
    fstab = tmp_path / "fstab"
    fstab.write_text("# old\n")
    target = tmp_path / "a" / "b" / "merged"
    plan = Plan(
        actions=[Action("write_fstab", str(fstab)), Action("create_dir", str(target))],
        fstab_text="# new\n",
    )
    outcome = OverlayExecutor(run, str(fstab), backup=True).apply(plan)
    assert target.is_dir()
    assert fstab.read_text() == "# new\n"
    assert outcome.backup_file is not None
    assert Path(outcome.backup_file).read_text() == "# old\n"
    assert [action.kind for action in outcome.done] == ["write_fstab", "create_dir"]


def test_failed_command_rolls_back_fstab_and_dirs(tmp_path: Path) -> None:
    fstab = tmp_path / "fstab"
    fstab.write_text("# old\n")
    made = tmp_path / "new" / "upper"
    plan = Plan(
        actions=[
            Action("write_fstab", str(fstab)),
            Action("create_dir", str(made)),
            Action("mount", "/nowhere", ("false",)),
        ],
        fstab_text="# new\n",
    )
    with pytest.raises(OverlayError, match="rolled back") as caught:
        OverlayExecutor(run, str(fstab)).apply(plan)
    assert fstab.read_text() == "# old\n"
    assert not (tmp_path / "new").exists()
    assert caught.value.details["rc"] == 1
    assert f"removed {tmp_path / 'new'}" in caught.value.msg


def test_rollback_removes_a_fstab_that_did_not_exist(tmp_path: Path) -> None:
    fstab = tmp_path / "fstab"
    plan = Plan(
        actions=[Action("write_fstab", str(fstab)), Action("mount", "/x", ("false",))],
        fstab_text="overlay /x overlay lowerdir=/a 0 0\n",
    )
    with pytest.raises(OverlayError):
        OverlayExecutor(run, str(fstab)).apply(plan)
    assert not fstab.exists()


def test_fstab_in_missing_directory(tmp_path: Path) -> None:
    fstab = tmp_path / "nope" / "fstab"
    plan = Plan(actions=[Action("write_fstab", str(fstab))], fstab_text="x\n")
    with pytest.raises(OverlayError, match="its directory does not exist"):
        OverlayExecutor(run, str(fstab)).apply(plan)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_real_mount_failure_removes_created_dirs(tmp_path: Path) -> None:
    spec = build_spec(
        str(tmp_path / "merged"),
        [str(tmp_path / "missing-lower")],
        str(tmp_path / "up"),
        str(tmp_path / "wk"),
    )
    backend = KernelOverlay()
    plan = Plan(
        actions=[
            Action("create_dir", spec.path),
            Action("create_dir", str(spec.upperdir)),
            Action("create_dir", str(spec.workdir)),
            Action("mount", spec.path, tuple(backend.mount_argv(spec))),
        ]
    )
    with pytest.raises(OverlayError, match="cannot mount overlay") as caught:
        OverlayExecutor(run, str(tmp_path / "fstab")).apply(plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert caught.value.details["stderr"]


@pytest.mark.parametrize(
    ("kind", "stderr", "message"),
    [
        ("unmount", "umount: /m: target is busy.", "busy \\(EBUSY\\)"),
        ("mount", "mount: unknown filesystem type 'overlay'.", "no overlay file system"),
        ("mount", "mount: /m: wrong fs type, bad option.", "cannot mount overlay /m: mount: /m"),
        ("remount", "", "cannot remount overlay /m: exit code 32"),
    ],
)
def test_command_error_names_the_cause(kind: str, stderr: str, message: str) -> None:
    error = command_error(Action(kind, "/m"), CommandResult(32, "", stderr))
    assert error.details == {"rc": 32, "stdout": "", "stderr": stderr}
    with pytest.raises(OverlayError, match=message):
        raise error


def test_busy_hint_quotes_the_path() -> None:
    error = command_error(Action("unmount", "/m x"), CommandResult(32, "", "target is busy"))
    assert "fuser -vm '/m x'" in error.hint


def test_kernel_messages_replace_the_generic_text() -> None:
    error = command_error(
        Action("mount", "/m"),
        CommandResult(32, "", "mount: /m: wrong fs type, bad option"),
        ["overlay: Unknown parameter 'x'"],
    )
    assert "the kernel says: overlay: Unknown parameter 'x'" in error.msg
    assert error.details["kernel_messages"] == ["overlay: Unknown parameter 'x'"]


def test_failed_mount_after_unmount_runs_the_undo(tmp_path: Path) -> None:
    marker = tmp_path / "previous-mounted-again"
    plan = Plan(
        actions=[
            Action("unmount", "/m", ("true",), undo=("touch", str(marker))),
            Action("mount", "/m", ("false",)),
        ]
    )
    with pytest.raises(OverlayError, match="mounted the previous overlay on /m again"):
        OverlayExecutor(run, str(tmp_path / "fstab")).apply(plan)
    assert marker.exists()


def test_failed_undo_is_reported(tmp_path: Path) -> None:
    plan = Plan(
        actions=[
            Action("unmount", "/m", ("true",), undo=("false",)),
            Action("mount", "/m", ("false",)),
        ]
    )
    with pytest.raises(OverlayError, match="could not mount the previous overlay on /m again"):
        OverlayExecutor(run, str(tmp_path / "fstab")).apply(plan)
