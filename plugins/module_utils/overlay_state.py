# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""``overlay_mount`` from start to end: gather, decide, act.

:func:`ensure_state` reads the live mount table and the fstab, asks
:func:`overlay_plan.plan` for the actions, checks the layers when a mount is planned,
and (outside check mode) hands the plan to the executor.  The result dict is what the
module returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ansible_collections.lapis.layers.plugins.module_utils import fstab as fstab_file
from ansible_collections.lapis.layers.plugins.module_utils.fs_context import (
    overlay_failure_reason,
)
from ansible_collections.lapis.layers.plugins.module_utils.fuse_overlay.backend import (
    describe_live,
)
from ansible_collections.lapis.layers.plugins.module_utils.mountinfo import (
    LiveOverlay,
    find_mount,
    live_overlay,
    read_mountinfo,
)
from ansible_collections.lapis.layers.plugins.module_utils.overlay import (
    build_spec,
    normalize_path,
    read_option_defaults,
    require_absolute,
)
from ansible_collections.lapis.layers.plugins.module_utils.overlay_checks import (
    check_kernel,
    check_layers,
    missing_dirs,
)
from ansible_collections.lapis.layers.plugins.module_utils.overlay_executor import (
    OverlayExecutor,
    Runner,
)
from ansible_collections.lapis.layers.plugins.module_utils.overlay_plan import (
    Gathered,
    OverlayBackend,
    Request,
    plan,
)

FSTAB_STATES = ("mounted", "present", "absent")


def gather(request: Request) -> Gathered:
    """Read the live mount on the path, the fstab, and which directories are missing."""
    entries = read_mountinfo()
    mount = find_mount(entries, request.path)
    lines = None
    if request.state in FSTAB_STATES:
        lines = fstab_file.parse_fstab(fstab_file.read_text(request.fstab) or "")
    return Gathered(
        mount=mount,
        live=describe_live(live_overlay(mount)) if mount is not None else None,
        fstab_lines=lines,
        missing_dirs=tuple(missing_dirs(request.spec)) if request.spec else (),
        option_defaults=read_option_defaults(),
    )


def find_live(path: str) -> LiveOverlay | None:
    """The overlay mounted on ``path`` now (a fuse one with its daemon's layers), if any."""
    mount = find_mount(read_mountinfo(), path)
    return describe_live(live_overlay(mount)) if mount is not None else None


def preflight(request: Request, probe: bool, backend: OverlayBackend | None = None) -> None:
    """Check the host and the layers before a mount (``probe`` writes a test xattr)."""
    if request.spec is not None:
        if backend is None:
            check_kernel()
        else:
            backend.check_host()
        check_layers(request.spec, read_mountinfo(), probe=probe)


def explain_failure(request: Request) -> list[str]:
    """The kernel's messages about mounting the requested overlay."""
    return overlay_failure_reason(request.spec) if request.spec is not None else []


@contextlib.contextmanager
def _fstab_lock(request: Request, check_mode: bool) -> Iterator[None]:
    if check_mode or request.state not in FSTAB_STATES:
        yield
        return
    with fstab_file.locked(request.fstab):
        yield


def ensure_state(
    request: Request, backend: OverlayBackend, run: Runner, check_mode: bool, backup: bool
) -> dict[str, Any]:
    """Bring the overlay to ``request.state``; returns the module's result."""
    with _fstab_lock(request, check_mode):
        decided = plan(request, gather(request), backend)
        mounts = any(action.kind == "mount" for action in decided.actions)
        if mounts:
            # what can be checked before anything is created
            preflight(request, probe=False, backend=backend)

        backup_file = None
        explain = (lambda: explain_failure(request)) if backend.name == "kernel" else None
        if decided.changed and not check_mode:
            executor = OverlayExecutor(
                run,
                request.fstab,
                backup,
                before_mount=lambda: preflight(request, probe=True, backend=backend),
                explain_mount_failure=explain,
            )
            backup_file = executor.apply(decided).backup_file

    after = find_mount(read_mountinfo(), request.path)
    live_after = describe_live(live_overlay(after)) if after is not None else None
    result: dict[str, Any] = {
        "changed": decided.changed,
        "path": request.path,
        "fstab": request.fstab,
        "backend": backend.name,
        "actions": [action.to_dict() for action in decided.actions],
        "overlay": request.spec.to_dict() if request.spec else None,
        "mount": live_after.to_dict() if live_after else None,
        "diff": decided.diff(request.fstab, request.path),
    }
    if backup_file:
        result["backup_file"] = backup_file
    return result


def make_request(params: dict[str, Any]) -> Request:
    """The :class:`Request` for the module's parameters; raises on invalid ones."""
    require_absolute("path", params["path"])
    spec = None
    if params["lowerdirs"] or params["state"] in ("mounted", "ephemeral", "present"):
        spec = build_spec(
            params["path"],
            params["lowerdirs"],
            params["upperdir"],
            params["workdir"],
            params["options"],
        )
    return Request(
        state=params["state"],
        path=normalize_path(params["path"]),
        spec=spec,
        fstab=params["fstab"],
        force=params["force"],
        create_dirs=params["create_dirs"],
    )
