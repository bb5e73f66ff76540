# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Read the live mount table (``/proc/self/mountinfo``) and the layers of overlay mounts.

The kernel writes each mountinfo field with ``\\ooo`` octal escapes for space, tab,
newline and backslash (and, inside overlay superblock options, for commas).  Overlayfs
shows ``lowerdir=``, ``upperdir=`` and ``workdir=`` the way the user passed them, so a
path may also carry the overlay escaping (``\\,`` ``\\:`` ``\\\\``) underneath the octal
one.  :func:`parse_mountinfo` removes the first layer, :func:`live_overlay` the second.

FUSE overlay implementations (``fuse.lapis-overlay``, ``fuse.fuse-overlayfs``) are
recognised as overlays too, but FUSE does not publish its layers in mountinfo, so their
``lowerdirs`` stay unknown (``None``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"
KERNEL_FSTYPE = "overlay"
FUSE_FSTYPES = ("fuse.lapis-overlay", "fuse.fuse-overlayfs")

_OCTAL = re.compile(r"\\([0-7]{3})")


class MountInfoError(ValueError):
    """A mountinfo line that does not have the kernel's shape."""


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo, with the octal escapes removed from the path fields."""

    mount_id: int
    parent_id: int
    device: str
    root: str
    mount_point: str
    mount_options: tuple[str, ...]
    optional_fields: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]


@dataclass(frozen=True)
class LiveOverlay:
    """An overlay as it is mounted now: layers (topmost lower first) and options."""

    mount_point: str
    backend: str
    fstype: str
    source: str
    lowerdirs: tuple[str, ...] | None
    datadirs: tuple[str, ...]
    upperdir: str | None
    workdir: str | None
    options: tuple[str, ...]
    mount_options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        """True when the mount is read-only (mount flag or read-only union)."""
        return "ro" in self.mount_options or self.read_only_union

    @property
    def read_only_union(self) -> bool:
        """True for a kernel overlay without upperdir and workdir."""
        return self.backend == "kernel" and self.upperdir is None and self.workdir is None

    def to_dict(self) -> dict[str, object]:
        """The facts ``overlay_info`` returns for this mount."""
        return {
            "path": self.mount_point,
            "backend": self.backend,
            "fstype": self.fstype,
            "source": self.source,
            "lowerdirs": list(self.lowerdirs) if self.lowerdirs is not None else None,
            "datadirs": list(self.datadirs),
            "upperdir": self.upperdir,
            "workdir": self.workdir,
            "options": list(self.options),
            "mount_options": list(self.mount_options),
            "read_only": self.read_only,
            "read_only_union": self.read_only_union,
        }


def unescape_octal(text: str) -> str:
    """Replace the kernel's ``\\ooo`` escapes (mountinfo, fstab) by their characters."""
    return _OCTAL.sub(lambda match: chr(int(match.group(1), 8)), text)


def parse_mountinfo_line(line: str) -> MountEntry:
    """Parse one mountinfo line (see proc(5)); raises :class:`MountInfoError`."""
    fields = line.split(" ")
    try:
        separator = fields.index("-", 6)
    except ValueError:
        raise MountInfoError(f"mountinfo line without the ' - ' separator: {line!r}") from None
    if len(fields) < separator + 4 or separator < 6:
        raise MountInfoError(f"mountinfo line with too few fields: {line!r}")
    try:
        mount_id, parent_id = int(fields[0]), int(fields[1])
    except ValueError:
        raise MountInfoError(f"mountinfo line with a non-numeric mount id: {line!r}") from None
    return MountEntry(
        mount_id=mount_id,
        parent_id=parent_id,
        device=fields[2],
        root=unescape_octal(fields[3]),
        mount_point=unescape_octal(fields[4]),
        mount_options=tuple(fields[5].split(",")),
        optional_fields=tuple(fields[6:separator]),
        fstype=unescape_octal(fields[separator + 1]),
        source=unescape_octal(fields[separator + 2]),
        super_options=split_super_options(" ".join(fields[separator + 3 :])),
    )


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse the whole mountinfo text, in the kernel's order (later mounts stack on top)."""
    return [parse_mountinfo_line(line) for line in text.splitlines() if line.strip()]


def split_super_options(raw: str) -> tuple[str, ...]:
    """Split raw superblock options on commas, then remove the octal escapes of each.

    Commas inside values are written as ``\\054`` by the kernel, so a literal comma in
    the raw text always separates two options.
    """
    if not raw:
        return ()
    return tuple(unescape_octal(option) for option in raw.split(","))


def unescape_layer_path(text: str) -> str:
    """Remove overlayfs' backslash escaping from one layer path (``\\x`` becomes ``x``)."""
    out: list[str] = []
    chars = iter(text)
    for char in chars:
        out.append(next(chars, "\\") if char == "\\" else char)
    return "".join(out)


def split_lowerdir(value: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split a ``lowerdir=`` value into (lower layers, data-only layers).

    Layers are separated by unescaped ``:``; a ``::`` starts the data-only layers
    (kernel 6.5+).  The result is unescaped and keeps the kernel's order, topmost first.
    """
    groups: list[list[str]] = [[]]
    current: list[str] = []
    index = 0
    while index < len(value):
        char = value[index]
        if char == "\\" and index + 1 < len(value):
            current.append(value[index + 1])
            index += 2
            continue
        if char == ":":
            groups[-1].append("".join(current))
            current = []
            if value[index + 1 : index + 2] == ":" and len(groups) == 1:
                groups.append([])
                index += 1
        else:
            current.append(char)
        index += 1
    groups[-1].append("".join(current))
    lowers = tuple(path for path in groups[0] if path)
    data = tuple(path for path in groups[1] if path) if len(groups) > 1 else ()
    return lowers, data


def overlay_backend(fstype: str) -> str | None:
    """``kernel`` or ``fuse`` for an overlay filesystem type, ``None`` for anything else."""
    if fstype == KERNEL_FSTYPE:
        return "kernel"
    if fstype in FUSE_FSTYPES or (fstype.startswith("fuse.") and "overlay" in fstype):
        return "fuse"
    return None


def live_overlay(entry: MountEntry) -> LiveOverlay | None:
    """The overlay layers of a mount entry, or ``None`` when it is not an overlay."""
    backend = overlay_backend(entry.fstype)
    if backend is None:
        return None
    lowers: list[str] = []
    datadirs: list[str] = []
    upperdir = workdir = None
    others: list[str] = []
    for option in entry.super_options:
        key, sep, value = option.partition("=")
        if key == "lowerdir" and sep:
            found, data = split_lowerdir(value)
            lowers.extend(found)
            datadirs.extend(data)
        elif key == "lowerdir+" and sep:
            lowers.append(unescape_layer_path(value))
        elif key == "datadir+" and sep:
            datadirs.append(unescape_layer_path(value))
        elif key == "upperdir" and sep:
            upperdir = unescape_layer_path(value)
        elif key == "workdir" and sep:
            workdir = unescape_layer_path(value)
        elif option not in ("rw", "ro"):
            others.append(option)
    known = backend == "kernel" or bool(lowers)
    return LiveOverlay(
        mount_point=entry.mount_point,
        backend=backend,
        fstype=entry.fstype,
        source=entry.source,
        lowerdirs=tuple(lowers) if known else None,
        datadirs=tuple(datadirs),
        upperdir=upperdir,
        workdir=workdir,
        options=tuple(others),
        mount_options=entry.mount_options,
    )


def list_overlays(entries: list[MountEntry], path: str | None = None) -> list[LiveOverlay]:
    """Every overlay mount, optionally only the one(s) mounted on ``path``."""
    found = [overlay for overlay in map(live_overlay, entries) if overlay is not None]
    if path is not None:
        wanted = "/" + os.path.normpath(path).lstrip("/")
        found = [overlay for overlay in found if overlay.mount_point == wanted]
    return found


def find_mount(entries: list[MountEntry], path: str) -> MountEntry | None:
    """The topmost mount on ``path`` (the last one in mountinfo order), if any."""
    wanted = "/" + os.path.normpath(path).lstrip("/")
    matches = [entry for entry in entries if entry.mount_point == wanted]
    return matches[-1] if matches else None


def read_mountinfo(path: str = MOUNTINFO) -> list[MountEntry]:
    """Read and parse the live mount table."""
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        return parse_mountinfo(handle.read())
