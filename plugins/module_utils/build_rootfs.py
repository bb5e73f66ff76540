# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Kernel overlay mounts for build steps: a writable step root and read-only stage views.

``step_root(work, lowerdirs)`` mounts the layers below a step (topmost first) with a
fresh upper directory at ``<work>/merged``; whatever the step does there lands in
``<work>/upper``, which becomes the step's layer. The mount is made with
``redirect_dir=off,metacopy=off,index=off`` so the upper only ever holds what an OCI
layer can say: whole files, whiteout devices and opaque directories (a renamed lower
directory is copied by the tool that renames it, not recorded as a redirect).

``read_only_view(work, lowerdirs)`` mounts the layers alone (no upper) for
``COPY --from`` and ``RUN --mount=from=``. Both unmount when the block ends, also on
errors, lazily if something still holds the mount.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

OVERLAY_FIXED_OPTIONS = "redirect_dir=off,metacopy=off,index=off"


class RootfsError(Exception):
    """An overlay mount for a build step failed; the message carries mount's reason."""


@dataclass(frozen=True)
class StepRoot:
    """A mounted step root: ``merged`` to work in, ``upper`` holding the changes."""

    merged: Path
    upper: Path


def _escape(path: str) -> str:
    if "," in path:
        raise RootfsError(f"path {path} contains a comma, which overlay options cannot hold")
    return path.replace("\\", "\\\\").replace(":", "\\:")


def _mount(options: str, target: Path) -> None:
    cmd = ["mount", "-t", "overlay", "overlay", "-o", options, str(target)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RootfsError(
            f"cannot mount the build overlay at {target}: {proc.stderr.strip() or proc.stdout}"
        )


def unmount(target: Path) -> None:
    """Unmount ``target``; lazily when it is busy."""
    proc = subprocess.run(["umount", str(target)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lazy = subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)
        if lazy.returncode != 0:
            raise RootfsError(f"cannot unmount {target}: {proc.stderr.strip()}")


def _lowers(work: Path, lowerdirs: list[str], minimum: int) -> list[str]:
    lowers = list(lowerdirs)
    while len(lowers) < minimum:
        empty = work / f"empty-{len(lowers)}"
        empty.mkdir(mode=0o755, exist_ok=True)
        lowers.append(str(empty))
    return lowers


@contextlib.contextmanager
def step_root(work: Path, lowerdirs: list[str]) -> Iterator[StepRoot]:
    """Mount ``lowerdirs`` (topmost first) + a fresh upper at ``work/merged``."""
    upper, ovl_work, merged = work / "upper", work / "work", work / "merged"
    for path in (upper, ovl_work, merged):
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    lower = ":".join(_escape(p) for p in _lowers(work, lowerdirs, 1))
    options = (
        f"lowerdir={lower},upperdir={_escape(str(upper))},workdir={_escape(str(ovl_work))},"
        + OVERLAY_FIXED_OPTIONS
    )
    _mount(options, merged)
    try:
        yield StepRoot(merged=merged, upper=upper)
    finally:
        unmount(merged)


@contextlib.contextmanager
def read_only_view(work: Path, lowerdirs: list[str]) -> Iterator[Path]:
    """Mount ``lowerdirs`` read-only at ``work/view`` (an empty layer pads a single lower)."""
    view = work / "view"
    view.mkdir(mode=0o755, parents=True, exist_ok=True)
    lower = ":".join(_escape(p) for p in _lowers(work, lowerdirs, 2))
    _mount(f"lowerdir={lower},{OVERLAY_FIXED_OPTIONS}", view)
    try:
        yield view
    finally:
        unmount(view)


def is_empty_dir(path: Path) -> bool:
    """Whether a directory has no entries."""
    with os.scandir(path) as entries:
        return next(entries, None) is None
