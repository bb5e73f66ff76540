# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The desired overlay mount, how it is written for the kernel, and how it differs from a live one.

Vocabulary: ``lowerdirs`` are listed topmost first, exactly as in the kernel's
``lowerdir=`` option; ``upperdir`` and ``workdir`` come together or not at all (without
them the overlay is a read-only union).  Options fall into three groups:

* per-mount (VFS) flags such as ``ro`` or ``nosuid``, which ``mount -o remount`` can change;
* overlay options such as ``index=on`` or ``userxattr``, fixed when the overlay is
  mounted: the kernel silently ignores them on remount;
* fstab-only options such as ``nofail`` or ``x-systemd.*``, never given to the kernel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ansible_collections.lapis.layers.plugins.module_utils.fstab import FstabEntry
from ansible_collections.lapis.layers.plugins.module_utils.mountinfo import LiveOverlay

OVERLAY_SOURCE = "overlay"
OVERLAY_FSTYPE = "overlay"
OVERLAY_PARAMETERS = "/sys/module/overlay/parameters"

VFS_FLAGS = frozenset(
    (
        "ro",
        "rw",
        "nosuid",
        "suid",
        "nodev",
        "dev",
        "noexec",
        "exec",
        "noatime",
        "atime",
        "relatime",
        "norelatime",
        "strictatime",
        "nodiratime",
        "diratime",
    )
)
# Per-mount flags that mountinfo always shows when they are set.
_NEGATIVE_FLAGS = {"nosuid": "suid", "nodev": "dev", "noexec": "exec"}
_ATIME_FLAGS = ("noatime", "relatime", "strictatime")
FSTAB_ONLY = frozenset(("defaults", "auto", "noauto", "nofail", "user", "nouser", "users"))
FSTAB_ONLY_PREFIXES = ("x-", "comment=", "_netdev", "owner", "group")
LAYER_KEYS = ("lowerdir", "upperdir", "workdir", "lowerdir+", "datadir+")
# Overlay options the kernel may drop without an error (xino=on on one filesystem) or
# shows depending on other options (uuid): they cannot be checked against mountinfo.
UNVERIFIABLE = frozenset(("xino", "uuid"))
# How mountinfo spells an option that is given under another name.
ALIASES = {"volatile": "fsync=volatile"}


class OverlayError(Exception):
    """A failure the user can act on: what failed, on which object, why, and a hint."""

    def __init__(self, msg: str, hint: str = "", **details: object) -> None:
        super().__init__(msg)
        self.msg = msg
        self.hint = hint
        self.details = details

    def message(self) -> str:
        """The message for ``fail_json``: the failure and, when there is one, the fix."""
        return f"{self.msg}. {self.hint}" if self.hint else self.msg

    def __str__(self) -> str:
        return self.message()


def normalize_path(path: str) -> str:
    """An absolute path in one spelling: no ``.``/``..``, no doubled or trailing slashes."""
    return "/" + os.path.normpath(path).lstrip("/")


def escape_layer_path(path: str) -> str:
    """Escape ``\\`` ``,`` and ``:`` for overlayfs' mount options (the kernel undoes it)."""
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def join_lowerdir(lowerdirs: tuple[str, ...]) -> str:
    """The ``lowerdir=`` value: escaped layers joined by ``:``, topmost first."""
    return ":".join(escape_layer_path(path) for path in lowerdirs)


def classify_option(option: str) -> str:
    """``vfs``, ``fstab`` or ``overlay``: where an option goes."""
    if option in VFS_FLAGS:
        return "vfs"
    if option in FSTAB_ONLY or option.startswith(FSTAB_ONLY_PREFIXES):
        return "fstab"
    return "overlay"


@dataclass(frozen=True)
class OverlaySpec:
    """The overlay the user asked for."""

    path: str
    lowerdirs: tuple[str, ...]
    upperdir: str | None = None
    workdir: str | None = None
    options: tuple[str, ...] = ()

    @property
    def read_only_union(self) -> bool:
        """No upperdir and workdir: the kernel mounts a read-only union of the lowers."""
        return self.upperdir is None

    def vfs_options(self) -> tuple[str, ...]:
        """Per-mount flags; a read-only union always carries ``ro``."""
        flags = tuple(opt for opt in self.options if classify_option(opt) == "vfs")
        if self.read_only_union and "ro" not in flags:
            flags = ("ro", *flags)
        return flags

    def overlay_options(self) -> tuple[str, ...]:
        """Options for overlayfs itself (``index=on``, ``userxattr`` ...)."""
        return tuple(opt for opt in self.options if classify_option(opt) == "overlay")

    def fstab_only_options(self) -> tuple[str, ...]:
        """Options only fstab and mount(8) read (``nofail``, ``x-systemd.*`` ...)."""
        return tuple(opt for opt in self.options if classify_option(opt) == "fstab")

    def layer_options(self) -> tuple[str, ...]:
        """``lowerdir=``, ``upperdir=`` and ``workdir=``, escaped for the kernel."""
        layers = [f"lowerdir={join_lowerdir(self.lowerdirs)}"]
        if self.upperdir is not None and self.workdir is not None:
            layers.append(f"upperdir={escape_layer_path(self.upperdir)}")
            layers.append(f"workdir={escape_layer_path(self.workdir)}")
        return tuple(layers)

    def mount_data(self) -> str:
        """The ``-o`` argument of ``mount -t overlay``."""
        return ",".join((*self.layer_options(), *self.overlay_options(), *self.vfs_options()))

    def fstab_entry(self) -> FstabEntry:
        """The fstab entry that persists this overlay."""
        options = ",".join((self.mount_data(), *self.fstab_only_options()))
        return FstabEntry(OVERLAY_SOURCE, self.path, OVERLAY_FSTYPE, options, "0", "0")

    def to_dict(self) -> dict[str, object]:
        """The spec as the modules return it."""
        return {
            "path": self.path,
            "lowerdirs": list(self.lowerdirs),
            "upperdir": self.upperdir,
            "workdir": self.workdir,
            "options": list(self.options),
            "read_only_union": self.read_only_union,
            "mount_data": self.mount_data(),
        }


def build_spec(
    path: str,
    lowerdirs: list[str] | None,
    upperdir: str | None = None,
    workdir: str | None = None,
    options: list[str] | None = None,
) -> OverlaySpec:
    """Validate the user's parameters (no file system access) and return the spec."""
    require_absolute("path", path)
    lowers = list(lowerdirs or [])
    if not lowers:
        raise OverlayError(
            f"overlay {path}: no lowerdirs given",
            "List at least one lower directory in lowerdirs (topmost first)",
        )
    for lower in lowers:
        require_absolute("lowerdir", lower)
    if (upperdir is None) != (workdir is None):
        raise OverlayError(
            f"overlay {path}: upperdir and workdir must be given together",
            "Give both for a writable overlay, or neither for a read-only union",
        )
    for name, value in (("upperdir", upperdir), ("workdir", workdir)):
        if value is not None:
            require_absolute(name, value)
    normalized = tuple(normalize_path(lower) for lower in lowers)
    duplicates = sorted({lower for lower in normalized if normalized.count(lower) > 1})
    if duplicates:
        raise OverlayError(
            f"overlay {path}: lowerdir {duplicates[0]} is listed more than once",
            "Each lower directory may appear only once in lowerdirs",
        )
    if upperdir is None and len(lowers) < 2:
        raise OverlayError(
            f"overlay {path}: a read-only union needs at least two lowerdirs",
            "Add a second lower directory, or give upperdir and workdir for a writable overlay",
        )
    opts = _clean_options(path, options or [])
    if upperdir is None and "rw" in opts:
        raise OverlayError(
            f"overlay {path}: option rw asks for a writable read-only union",
            "Give upperdir and workdir for a writable overlay, or drop rw",
        )
    return OverlaySpec(
        path=normalize_path(path),
        lowerdirs=normalized,
        upperdir=normalize_path(upperdir) if upperdir is not None else None,
        workdir=normalize_path(workdir) if workdir is not None else None,
        options=opts,
    )


def require_absolute(name: str, value: str) -> None:
    """Raise unless ``value`` is an absolute path without newline or NUL."""
    if not value or not value.startswith("/"):
        raise OverlayError(
            f"{name} {value!r} is not an absolute path",
            "Overlay layers and mount points must be absolute paths",
        )
    if "\n" in value or "\0" in value:
        raise OverlayError(f"{name} {value!r} contains a newline or NUL byte")


def _clean_options(path: str, options: list[str]) -> tuple[str, ...]:
    cleaned: list[str] = []
    for raw in options:
        option = raw.strip()
        key = option.partition("=")[0]
        if key in LAYER_KEYS:
            raise OverlayError(
                f"overlay {path}: option {key}= is not allowed in options",
                "Give layers with the lowerdirs, upperdir and workdir parameters",
            )
        if "," in option or not option:
            raise OverlayError(
                f"overlay {path}: option {option!r} is empty or contains a comma",
                "Give one option per list item",
            )
        if option not in cleaned:
            cleaned.append(option)
    return tuple(cleaned)


def read_option_defaults(parameters: str = OVERLAY_PARAMETERS) -> dict[str, str]:
    """The overlay module's defaults, which mountinfo leaves out (``index`` ``metacopy`` ...)."""

    def read(name: str) -> str | None:
        try:
            return (Path(parameters) / name).read_text(encoding="ascii").strip()
        except OSError:
            return None

    defaults: dict[str, str] = {}
    for name in ("index", "metacopy", "nfs_export"):
        value = read(name)
        if value in ("Y", "N"):
            defaults[name] = "on" if value == "Y" else "off"
    redirect, follow = read("redirect_dir"), read("redirect_always_follow")
    if redirect == "Y":
        defaults["redirect_dir"] = "on"
    elif redirect == "N" and follow in ("Y", "N"):
        defaults["redirect_dir"] = "follow" if follow == "Y" else "off"
    return defaults


@dataclass(frozen=True)
class MountDelta:
    """How a live overlay differs from the spec."""

    layer_changes: tuple[str, ...] = ()
    option_changes: tuple[str, ...] = ()
    vfs_changes: tuple[str, ...] = ()
    remount_flags: tuple[str, ...] = field(default=())

    @property
    def needs_new_mount(self) -> bool:
        """Layers or overlay options differ: only unmount and mount again can apply this."""
        return bool(self.layer_changes or self.option_changes)

    @property
    def needs_remount(self) -> bool:
        """Only per-mount flags differ: ``mount -o remount`` applies them."""
        return bool(self.vfs_changes) and not self.needs_new_mount

    @property
    def in_sync(self) -> bool:
        """Nothing differs."""
        return not (self.layer_changes or self.option_changes or self.vfs_changes)

    def reasons(self) -> list[str]:
        """Every difference, one short sentence each."""
        return [*self.layer_changes, *self.option_changes, *self.vfs_changes]


def compare(spec: OverlaySpec, live: LiveOverlay, defaults: dict[str, str]) -> MountDelta:
    """Compare the spec with a live overlay (``defaults`` from :func:`read_option_defaults`)."""
    return MountDelta(
        layer_changes=_layer_changes(spec, live),
        option_changes=_option_changes(spec, live, defaults),
        vfs_changes=_vfs_changes(spec, live),
        remount_flags=remount_flags(spec),
    )


def _layer_changes(spec: OverlaySpec, live: LiveOverlay) -> tuple[str, ...]:
    changes: list[str] = []
    if live.lowerdirs is None:
        changes.append(f"mounted by {live.fstype}, whose layers are not known")
        return tuple(changes)
    live_lowers = tuple(normalize_path(path) for path in live.lowerdirs or ())
    if live_lowers != spec.lowerdirs:
        what = "order" if sorted(live_lowers) == sorted(spec.lowerdirs) else "set"
        changes.append(
            f"lowerdirs {what} differs: mounted {list(live_lowers)}, wanted {list(spec.lowerdirs)}"
        )
    if live.datadirs:
        changes.append(f"data-only lowerdirs {list(live.datadirs)} are mounted, none wanted")
    for name, shown, want in (
        ("upperdir", live.upperdir, spec.upperdir),
        ("workdir", live.workdir, spec.workdir),
    ):
        have = normalize_path(shown) if shown is not None else None
        if have != want:
            changes.append(f"{name} differs: mounted {have}, wanted {want}")
    return tuple(changes)


def _option_changes(
    spec: OverlaySpec, live: LiveOverlay, defaults: dict[str, str]
) -> tuple[str, ...]:
    shown = dict(opt.partition("=")[::2] for opt in live.options)
    changes: list[str] = []
    for option in spec.overlay_options():
        spelled = ALIASES.get(option, option)
        key, _sep, value = spelled.partition("=")
        if "=" not in option:
            if spelled not in live.options:
                changes.append(f"overlay option {option} is not in effect")
            continue
        if key in shown:
            have = shown[key]
        elif key in UNVERIFIABLE:
            continue
        else:
            have = defaults.get(key, value)
        if have != value:
            changes.append(f"overlay option {key} is {have}, wanted {value}")
    return tuple(changes)


def remount_flags(spec: OverlaySpec) -> tuple[str, ...]:
    """The flags ``mount -o remount`` needs to give the live mount the wanted flags."""
    flags = list(spec.vfs_options())
    if "ro" not in flags and "rw" not in flags:
        flags.insert(0, "rw")
    for negative, positive in _NEGATIVE_FLAGS.items():
        if negative not in flags and positive not in flags:
            flags.append(positive)
    return tuple(flags)


def _vfs_changes(spec: OverlaySpec, live: LiveOverlay) -> tuple[str, ...]:
    wanted = set(remount_flags(spec))
    have = set(live.mount_options)
    changes: list[str] = []
    want_ro = "ro" in wanted
    if want_ro != ("ro" in have):
        changes.append(f"mounted {'rw' if want_ro else 'ro'}, wanted {'ro' if want_ro else 'rw'}")
    for negative in _NEGATIVE_FLAGS:
        if (negative in wanted) != (negative in have):
            changes.append(f"flag {negative} is {'off' if negative in wanted else 'on'}")
    for flag in (*_ATIME_FLAGS, "nodiratime"):
        if flag in wanted and flag not in have and not _strictatime_shown(flag, have):
            changes.append(f"flag {flag} is off")
    return tuple(changes)


def _strictatime_shown(flag: str, have: set[str]) -> bool:
    """mountinfo shows strictatime as the absence of noatime and relatime."""
    return flag == "strictatime" and not have.intersection(("noatime", "relatime"))


def spec_from_live(live: LiveOverlay) -> OverlaySpec | None:
    """A spec that mounts ``live`` again, or ``None`` when mountinfo does not say enough.

    Used to put back an overlay that a forced re-mount took down.  Options the kernel
    shows under another name are given back under the name it accepts.
    """
    if live.backend != "kernel" or not live.lowerdirs or live.datadirs:
        return None
    if (live.upperdir is None) != (live.workdir is None):
        return None
    accepted = {shown: given for given, shown in ALIASES.items()}
    options = [accepted.get(option, option) for option in live.options]
    options += [flag for flag in live.mount_options if flag in VFS_FLAGS and flag != "rw"]
    return OverlaySpec(
        path=normalize_path(live.mount_point),
        lowerdirs=tuple(live.lowerdirs),
        upperdir=live.upperdir,
        workdir=live.workdir,
        options=tuple(options),
    )


def render_live(live: LiveOverlay) -> str:
    """A live overlay in the same notation as :meth:`OverlaySpec.mount_data`, for diffs."""
    parts: list[str] = []
    if live.lowerdirs is not None:
        parts.append(f"lowerdir={join_lowerdir(live.lowerdirs)}")
    if live.upperdir is not None:
        parts.append(f"upperdir={escape_layer_path(live.upperdir)}")
    if live.workdir is not None:
        parts.append(f"workdir={escape_layer_path(live.workdir)}")
    parts.extend(live.options)
    parts.extend(live.mount_options)
    return ",".join(parts)
