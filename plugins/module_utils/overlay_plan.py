# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Decide what ``overlay_mount`` must do: from the gathered state to a list of actions.

Nothing here changes the system.  :func:`plan` takes what was read (live mount, fstab
text, missing directories) and returns a :class:`Plan`: the actions in the order they
run, the new fstab text, and the before/after diff.  Check mode returns this plan as
it is; otherwise :mod:`overlay_executor` carries it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

from ansible_collections.lapis.layers.plugins.module_utils.fstab import (
    FstabEntry,
    FstabLine,
    find_entry,
    render_fstab,
    set_entry,
)
from ansible_collections.lapis.layers.plugins.module_utils.mountinfo import (
    LiveOverlay,
    MountEntry,
)
from ansible_collections.lapis.layers.plugins.module_utils.overlay import (
    VFS_FLAGS,
    OverlayError,
    OverlaySpec,
    compare,
    render_live,
    spec_from_live,
)

STATES = ("mounted", "ephemeral", "present", "unmounted", "absent", "remounted")


@dataclass(frozen=True)
class Action:
    """One step: ``create_dir``, ``write_fstab``, ``unmount``, ``mount`` or ``remount``."""

    kind: str
    target: str
    command: tuple[str, ...] = ()
    reason: str = ""
    undo: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """The step as the module reports it (``undo`` runs only when a later step fails)."""
        return {
            "action": self.kind,
            "target": self.target,
            "command": list(self.command),
            "reason": self.reason,
            "undo": list(self.undo),
        }


@dataclass(frozen=True)
class Request:
    """What the user asked for."""

    state: str
    path: str
    spec: OverlaySpec | None
    fstab: str
    force: bool = False
    create_dirs: bool = True


@dataclass(frozen=True)
class Gathered:
    """What was read before deciding."""

    mount: MountEntry | None
    live: LiveOverlay | None
    fstab_lines: list[FstabLine] | None
    missing_dirs: tuple[str, ...] = ()
    option_defaults: dict[str, str] = field(default_factory=dict)


class OverlayBackend(Protocol):
    """What mounts an :class:`OverlaySpec`: the kernel today (``KernelOverlay``), FUSE later.

    The plan only asks a backend for the commands; the executor runs them.
    """

    name: str

    def mount_argv(self, spec: OverlaySpec) -> list[str]:
        """Command that mounts ``spec``."""

    def unmount_argv(self, path: str) -> list[str]:
        """Command that unmounts ``path``."""

    def remount_argv(self, path: str, flags: tuple[str, ...]) -> list[str]:
        """Command that changes the per-mount flags of ``path``."""

    def fstab_entry(self, spec: OverlaySpec) -> FstabEntry:
        """The fstab entry that persists ``spec``."""

    def check_host(self) -> None:
        """Raise :class:`OverlayError` when this host cannot mount with this backend."""


@dataclass
class Plan:
    """The actions, the fstab text to write and the diff."""

    actions: list[Action] = field(default_factory=list)
    fstab_text: str | None = None
    fstab_before: str = ""
    fstab_after: str = ""
    mount_before: str = ""
    mount_after: str = ""

    @property
    def changed(self) -> bool:
        """True when at least one action is planned."""
        return bool(self.actions)

    def diff(self, fstab: str, path: str) -> list[dict[str, str]]:
        """Before/after of the fstab line and of the mount options."""
        return [
            {
                "before_header": f"{fstab} (entry for {path})",
                "after_header": f"{fstab} (entry for {path})",
                "before": _line(self.fstab_before),
                "after": _line(self.fstab_after),
            },
            {
                "before_header": f"mount options of {path}",
                "after_header": f"mount options of {path}",
                "before": _line(self.mount_before),
                "after": _line(self.mount_after),
            },
        ]


def _line(text: str) -> str:
    return f"{text}\n" if text else ""


def plan(request: Request, gathered: Gathered, backend: OverlayBackend) -> Plan:
    """The plan for ``request.state``."""
    result = Plan()
    entry = find_entry(gathered.fstab_lines or [], request.path)
    result.fstab_before = result.fstab_after = entry.render() if entry else ""
    result.mount_before = result.mount_after = _render_mount(gathered)
    _refuse_foreign_mount(request, gathered, backend)
    if request.state in ("mounted", "present"):
        _plan_fstab(request, gathered, backend, result)
    if request.state in ("mounted", "ephemeral"):
        _plan_mount(request, gathered, backend, result)
    elif request.state in ("unmounted", "absent"):
        _plan_unmount(request, gathered, backend, result)
    elif request.state == "remounted":
        _plan_remount(request, gathered, backend, result)
    if request.state == "absent" and entry is not None:
        _plan_fstab_removal(request, gathered, result)
    return result


def _render_mount(gathered: Gathered) -> str:
    if gathered.live is not None:
        return render_live(gathered.live)
    if gathered.mount is not None:
        return f"{gathered.mount.fstype} {','.join(gathered.mount.mount_options)}"
    return ""


def _refuse_foreign_mount(request: Request, gathered: Gathered, backend: OverlayBackend) -> None:
    """Never unmount or stack over a mount that this backend did not make.

    A FUSE overlay counts as foreign to the kernel backend: it has its own daemon.
    """
    mount, live = gathered.mount, gathered.live
    if mount is None or request.state == "present":
        return
    if live is not None and live.backend == backend.name:
        return
    kind = "not an overlay" if live is None else f"not a {backend.name} overlay"
    raise OverlayError(
        f"{request.path} is a {mount.fstype} mount (source {mount.source}), {kind}",
        f"Unmount it yourself or choose another path; this module manages {backend.name} "
        "overlays only",
    )


def _plan_fstab(
    request: Request, gathered: Gathered, backend: OverlayBackend, result: Plan
) -> None:
    spec = _require_spec(request)
    wanted = backend.fstab_entry(spec)
    lines = gathered.fstab_lines or []
    if find_entry(lines, request.path) == wanted and _single_entry(lines, request.path):
        return
    result.fstab_text = render_fstab(set_entry(lines, request.path, wanted))
    result.fstab_after = wanted.render()
    result.actions.append(Action("write_fstab", request.fstab, reason="entry added or changed"))


def _plan_fstab_removal(request: Request, gathered: Gathered, result: Plan) -> None:
    lines = gathered.fstab_lines or []
    result.fstab_text = render_fstab(set_entry(lines, request.path, None))
    result.fstab_after = ""
    result.actions.append(Action("write_fstab", request.fstab, reason="entry removed"))


def _single_entry(lines: list[FstabLine], path: str) -> bool:
    return sum(1 for line in lines if line.entry and line.entry.mount_point == path) == 1


def _require_spec(request: Request) -> OverlaySpec:
    if request.spec is None:
        raise OverlayError(
            f"overlay {request.path}: state={request.state} needs lowerdirs",
            "List the lower directories (topmost first) in lowerdirs",
        )
    return request.spec


def _plan_mount(
    request: Request, gathered: Gathered, backend: OverlayBackend, result: Plan
) -> None:
    spec = _require_spec(request)
    live = gathered.live
    if live is None:
        _plan_dirs(request, gathered, result)
        result.actions.append(Action("mount", spec.path, tuple(backend.mount_argv(spec))))
        result.mount_after = spec.mount_data()
        return
    delta = compare(spec, live, gathered.option_defaults)
    if delta.needs_new_mount:
        _plan_replace(request, gathered, backend, result, delta.reasons())
    elif delta.needs_remount:
        flags = delta.remount_flags
        argv = tuple(backend.remount_argv(spec.path, flags))
        result.actions.append(Action("remount", spec.path, argv, "; ".join(delta.reasons())))
        result.mount_after = _with_flags(live, flags)


def _plan_replace(
    request: Request, gathered: Gathered, backend: OverlayBackend, result: Plan, reasons: list[str]
) -> None:
    spec = _require_spec(request)
    why = "; ".join(reasons)
    if not request.force:
        raise OverlayError(
            f"overlay {spec.path} is mounted with other layers or overlay options ({why})",
            "The kernel ignores these on remount, so they cannot be changed in place: set "
            "force=true to unmount and mount again (nothing may be using the mount point)",
        )
    _plan_dirs(request, gathered, result)
    previous = spec_from_live(gathered.live) if gathered.live is not None else None
    undo = tuple(backend.mount_argv(previous)) if previous is not None else ()
    unmount = tuple(backend.unmount_argv(spec.path))
    result.actions.append(Action("unmount", spec.path, unmount, why, undo=undo))
    result.actions.append(Action("mount", spec.path, tuple(backend.mount_argv(spec)), why))
    result.mount_after = spec.mount_data()


def _plan_dirs(request: Request, gathered: Gathered, result: Plan) -> None:
    if not gathered.missing_dirs:
        return
    if not request.create_dirs:
        raise OverlayError(
            f"overlay {request.path}: {', '.join(gathered.missing_dirs)} does not exist",
            "Create the directories, or set create_dirs=true",
        )
    for path in gathered.missing_dirs:
        result.actions.append(Action("create_dir", path, reason="does not exist"))


def _plan_unmount(
    request: Request, gathered: Gathered, backend: OverlayBackend, result: Plan
) -> None:
    if gathered.live is None:
        return
    argv = tuple(backend.unmount_argv(request.path))
    result.actions.append(Action("unmount", request.path, argv))
    result.mount_after = ""


def _plan_remount(
    request: Request, gathered: Gathered, backend: OverlayBackend, result: Plan
) -> None:
    live = gathered.live
    if live is None:
        raise OverlayError(
            f"overlay {request.path} is not mounted, so it cannot be remounted",
            "Use state=mounted or state=ephemeral to mount it",
        )
    if request.spec is not None:
        delta = compare(request.spec, live, gathered.option_defaults)
        if delta.needs_new_mount:
            _plan_replace(request, gathered, backend, result, delta.reasons())
            return
        flags = delta.remount_flags
    else:
        flags = tuple(opt for opt in live.mount_options if opt in VFS_FLAGS)
    argv = tuple(backend.remount_argv(request.path, flags))
    result.actions.append(Action("remount", request.path, argv, "state=remounted"))
    result.mount_after = _with_flags(live, flags)


def _with_flags(live: LiveOverlay, flags: tuple[str, ...]) -> str:
    """The live rendering with its per-mount flags replaced by ``flags``."""
    shown = tuple(flag for flag in flags if flag not in ("suid", "dev", "exec"))
    kept = tuple(opt for opt in live.mount_options if opt not in VFS_FLAGS)
    atime = tuple(opt for opt in live.mount_options if opt.endswith("atime"))
    if not any(flag.endswith("atime") for flag in shown):
        shown += atime
    return render_live(replace(live, mount_options=shown + kept))
