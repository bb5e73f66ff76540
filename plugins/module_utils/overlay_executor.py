# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The one place where ``overlay_mount`` changes the system.

:class:`KernelOverlay` is the backend: it knows the mount(8)/umount(8) commands for a
kernel overlay.  A FUSE backend only has to provide the same three ``*_argv`` methods
(see ``overlay_plan.OverlayBackend``).  :class:`OverlayExecutor` carries out a plan's actions
through that backend and the fstab writer, and undoes what it did when a step fails:
an overlay that a forced re-mount took down is mounted again (the ``undo`` of its
unmount), the previous fstab comes back and the directories it created are removed.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ansible_collections.lapis.layers.plugins.module_utils import fstab as fstab_file
from ansible_collections.lapis.layers.plugins.module_utils.overlay import (
    OVERLAY_FSTYPE,
    OVERLAY_SOURCE,
    OverlayError,
    OverlaySpec,
)
from ansible_collections.lapis.layers.plugins.module_utils.overlay_checks import check_kernel
from ansible_collections.lapis.layers.plugins.module_utils.overlay_plan import Action, Plan


@dataclass(frozen=True)
class CommandResult:
    """Exit code and output of one command."""

    rc: int
    stdout: str
    stderr: str


Runner = Callable[[list[str]], CommandResult]


class KernelOverlay:
    """The kernel's overlayfs, driven by mount(8) and umount(8) from util-linux."""

    name = "kernel"

    def __init__(self, mount_bin: str = "mount", umount_bin: str = "umount") -> None:
        self.mount_bin = mount_bin
        self.umount_bin = umount_bin

    def mount_argv(self, spec: OverlaySpec) -> list[str]:
        """``mount -t overlay -o DATA overlay PATH``; fstab is not consulted."""
        data = spec.mount_data()
        return [self.mount_bin, "-t", OVERLAY_FSTYPE, "-o", data, OVERLAY_SOURCE, spec.path]

    def unmount_argv(self, path: str) -> list[str]:
        """``umount PATH``."""
        return [self.umount_bin, path]

    def remount_argv(self, path: str, flags: tuple[str, ...]) -> list[str]:
        """``mount -o remount,FLAGS PATH``, with fstab and mtab options left out."""
        options = ",".join(("remount", *flags))
        return [self.mount_bin, "--options-source", "disable", "-o", options, path]

    def fstab_entry(self, spec: OverlaySpec) -> fstab_file.FstabEntry:
        """``overlay PATH overlay OPTIONS 0 0``."""
        return spec.fstab_entry()

    def check_host(self) -> None:
        """The running kernel must have overlayfs."""
        check_kernel()


@dataclass
class Outcome:
    """What the executor did, for the module's result."""

    done: list[Action] = field(default_factory=list)
    backup_file: str | None = None


class OverlayExecutor:
    """Runs a plan's actions in order; on failure, undoes the earlier ones.

    ``before_mount`` runs right before each mount, after the directories were created,
    so checks of new directories fail the run (and roll it back) before the kernel sees it.
    ``explain_mount_failure`` returns the kernel's own words after a mount has failed.
    """

    def __init__(
        self,
        run: Runner,
        fstab: str,
        backup: bool = False,
        before_mount: Callable[[], None] | None = None,
        explain_mount_failure: Callable[[], list[str]] | None = None,
    ) -> None:
        self.run = run
        self.fstab = fstab
        self.backup = backup
        self.before_mount = before_mount
        self.explain_mount_failure = explain_mount_failure
        self._created: list[str] = []
        self._undo: list[Action] = []
        self._fstab_original: str | None = None
        self._fstab_written = False

    def apply(self, plan: Plan) -> Outcome:
        """Carry out ``plan``; raise :class:`OverlayError` after rolling back on failure."""
        outcome = Outcome()
        for action in plan.actions:
            try:
                self._step(action, plan, outcome)
            except OverlayError as exc:
                undone = self._rollback()
                if undone:
                    exc.msg += f" (rolled back: {'; '.join(undone)})"
                raise
            outcome.done.append(action)
            if action.undo:
                self._undo.append(action)
        return outcome

    def _step(self, action: Action, plan: Plan, outcome: Outcome) -> None:
        if action.kind == "create_dir":
            self._create_dir(action.target)
        elif action.kind == "write_fstab":
            outcome.backup_file = self._write_fstab(plan.fstab_text or "")
        elif action.kind == "mount":
            if self.before_mount is not None:
                self.before_mount()
            self._run_command(action)
        elif action.kind in ("unmount", "remount"):
            self._run_command(action)
        else:
            raise OverlayError(f"unknown action {action.kind} on {action.target}")

    def _create_dir(self, path: str) -> None:
        missing: list[Path] = []
        parent = Path(path)
        while not os.path.lexists(parent):
            missing.insert(0, parent)
            parent = parent.parent
        for directory in missing:
            try:
                directory.mkdir(0o755)
            except OSError as exc:
                raise OverlayError(
                    f"cannot create directory {directory}: {exc.strerror}",
                    "Check the parent directory's permissions and file system",
                ) from exc
            self._created.append(str(directory))

    def _write_fstab(self, text: str) -> str | None:
        if not Path(self.fstab).absolute().parent.is_dir():
            raise OverlayError(
                f"fstab {self.fstab}: its directory does not exist", "Fix the fstab path"
            )
        self._fstab_original = fstab_file.read_text(self.fstab)
        backup = None
        if self.backup and self._fstab_original is not None:
            backup = fstab_file.backup_file(self.fstab)
        try:
            fstab_file.write_atomic(self.fstab, text)
        except OSError as exc:
            raise OverlayError(f"cannot write fstab {self.fstab}: {exc.strerror}") from exc
        self._fstab_written = True
        return backup

    def _run_command(self, action: Action) -> None:
        result = self.run(list(action.command))
        if result.rc == 0:
            return
        kernel: list[str] = []
        if action.kind == "mount" and self.explain_mount_failure is not None:
            kernel = self.explain_mount_failure()
        raise command_error(action, result, kernel)

    def _rollback(self) -> list[str]:
        undone: list[str] = []
        for action in reversed(self._undo):
            result = self.run(list(action.undo))
            if result.rc == 0:
                undone.append(f"mounted the previous overlay on {action.target} again")
            else:
                undone.append(
                    f"could not mount the previous overlay on {action.target} again: "
                    f"{result.stderr.strip() or result.rc}"
                )
        self._undo.clear()
        if self._fstab_written:
            fstab_file.restore(self.fstab, self._fstab_original)
            undone.append(f"restored {self.fstab}")
        for directory in reversed(self._created):
            shutil.rmtree(directory, ignore_errors=True)
            undone.append(f"removed {directory}")
        self._created.clear()
        self._fstab_written = False
        return undone


def command_error(
    action: Action, result: CommandResult, kernel: list[str] | None = None
) -> OverlayError:
    """An error for a failed mount/unmount/remount command, with the likely cause.

    ``kernel`` holds the kernel's own messages about the failure, when it gave any.
    """
    stderr = result.stderr.strip()
    first = stderr.splitlines()[0] if stderr else f"exit code {result.rc}"
    details: dict[str, object] = {"rc": result.rc, "stdout": result.stdout, "stderr": result.stderr}
    if kernel:
        details["kernel_messages"] = kernel
        return OverlayError(
            f"cannot {action.kind} overlay {action.target}: the kernel says: {'; '.join(kernel)}",
            "Fix the option or layer it names",
            **details,
        )
    if action.kind == "unmount" and "busy" in stderr:
        return OverlayError(
            f"cannot unmount overlay {action.target}: the mount point is busy (EBUSY), a "
            "process has a file open or its working directory under it",
            f"Find those processes with 'fuser -vm {shlex.quote(action.target)}', stop them, "
            "and run again",
            **details,
        )
    if "unknown filesystem type" in stderr:
        return OverlayError(
            f"cannot mount overlay {action.target}: the kernel has no overlay file system",
            "Load it with 'modprobe overlay'",
            **details,
        )
    return OverlayError(
        f"cannot {action.kind} overlay {action.target}: {first}",
        "The kernel log names the reason: 'dmesg | grep overlayfs'",
        **details,
    )
