# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Safety policy for layer members: small pure functions, one decision each.

Shaped like CPython's tarfile extraction filters (accept, adjust or reject one
member with a specific error), but written for a root filesystem: ownership,
device nodes, setuid bits and xattrs are kept, because an image needs them.

- ``member_path`` adjusts a member name to a path relative to the root: a
  leading ``/`` or ``./`` is dropped (the name is contained inside the root);
  a name whose ``..`` components climb above the root is refused.
- ``hardlink_target`` does the same for a hardlink's target.
- ``whiteout_kind`` recognises OCI whiteouts (``.wh.NAME``) and opaque markers
  (``.wh..wh..opq``) and refuses the ones that would delete outside their directory.
- ``member_xattrs`` keeps ``SCHILY.xattr.*`` records except the overlay's own
  ``trusted.overlay.*`` attributes, which a layer must not smuggle into the cache.
- ``to_entry`` combines them into an :class:`Entry` the extractor writes.

Symlinks are never refused for their target: the extractor resolves every parent
directory with the root as anchor, so a symlink can only lead inside the root.
"""

from __future__ import annotations

import posixpath
import stat
import tarfile
from dataclasses import dataclass, field
from typing import Mapping

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_XATTR_PREFIX = "trusted.overlay."
OPAQUE_XATTR = "trusted.overlay.opaque"
_PAX_XATTR = "SCHILY.xattr."

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
HARDLINK = "hardlink"
CHAR = "char"
BLOCK = "block"
FIFO = "fifo"
WHITEOUT = "whiteout"
OPAQUE = "opaque"

_TYPES = {
    tarfile.DIRTYPE: DIR,
    tarfile.SYMTYPE: SYMLINK,
    tarfile.LNKTYPE: HARDLINK,
    tarfile.CHRTYPE: CHAR,
    tarfile.BLKTYPE: BLOCK,
    tarfile.FIFOTYPE: FIFO,
}
DEVICE_TYPES = {CHAR: stat.S_IFCHR, BLOCK: stat.S_IFBLK, FIFO: stat.S_IFIFO}


class LayerError(Exception):
    """A layer that cannot be applied safely or correctly.

    ``member`` is the archive member at fault (``None`` for the layer as a whole),
    ``reason`` says why.
    """

    def __init__(self, member: str | None, reason: str) -> None:
        super().__init__(member, reason)
        self.member = member
        self.reason = reason

    def __str__(self) -> str:
        if self.member is None:
            return f"layer: {self.reason}"
        return f"layer member {self.member!r}: {self.reason}"


@dataclass
class Entry:
    """One member, checked and normalised: what the extractor writes.

    ``path`` is relative to the root ("" is the root itself). For a whiteout it is
    the path to delete, for an opaque marker the directory made opaque.
    """

    name: str
    path: str
    kind: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


def member_path(name: str) -> str:
    """The root-relative path of member ``name``; refuses names that climb out."""
    if "\x00" in name:
        raise LayerError(name, "member name contains a NUL byte")
    path = name[2:] if name.startswith("./") else name
    if not (path.startswith((".", "/")) or path.endswith("/") or "//" in path or "/." in path):
        return path  # already normal: the common case, checked cheaply
    clean = posixpath.normpath("/" + name.lstrip("/"))
    if _climbs_out(name):
        raise LayerError(name, "path escapes the root")
    return clean.lstrip("/")


def _climbs_out(name: str) -> bool:
    """True when the ``..`` components of ``name`` go above its starting point."""
    depth = 0
    for part in name.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def hardlink_target(member: str, linkname: str) -> str:
    """The root-relative path a hardlink points to; refuses targets outside the root."""
    if not linkname or "\x00" in linkname:
        raise LayerError(member, f"hardlink target {linkname!r} is not a valid name")
    if _climbs_out(linkname.lstrip("/")):
        raise LayerError(member, f"hardlink target {linkname!r} is outside the root")
    target = member_path(linkname)
    if not target:
        raise LayerError(member, "hardlink target is the root directory")
    return target


def whiteout_kind(path: str, member: str) -> tuple[str, str] | None:
    """``(WHITEOUT, deleted path)`` or ``(OPAQUE, directory)`` for a whiteout path.

    ``None`` for an ordinary path. A bare ``.wh.``, ``.wh..`` and ``.wh...``
    would delete their own directory or its parent and are refused; other
    ``.wh..wh.*`` names are reserved (AUFS metadata) and refused too.
    """
    parent, base = posixpath.split(path)
    if not base.startswith(WHITEOUT_PREFIX):
        return None
    if base == OPAQUE_MARKER:
        return OPAQUE, parent
    target = base[len(WHITEOUT_PREFIX) :]
    if target in ("", ".", ".."):
        raise LayerError(member, "whiteout names no entry of its directory")
    if target.startswith(WHITEOUT_PREFIX):
        raise LayerError(member, "reserved whiteout name (AUFS metadata) is not supported")
    return WHITEOUT, posixpath.join(parent, target)


def member_xattrs(pax_headers: Mapping[str, str]) -> dict[str, bytes]:
    """Extended attributes from PAX ``SCHILY.xattr.*`` records, minus ``trusted.overlay.*``."""
    found: dict[str, bytes] = {}
    for key, value in pax_headers.items():
        if not key.startswith(_PAX_XATTR):
            continue
        attr = key[len(_PAX_XATTR) :]
        if attr.startswith(OVERLAY_XATTR_PREFIX) or not attr:
            continue
        found[attr] = value.encode("utf-8", "surrogateescape")
    return found


def to_entry(member: tarfile.TarInfo) -> Entry:
    """Check one tar member and return what to write, or raise :class:`LayerError`."""
    path = member_path(member.name)
    special = whiteout_kind(path, member.name)
    if special is not None:
        return Entry(member.name, special[1], special[0])
    kind = _TYPES.get(member.type, FILE)
    if kind == DIR and member.issym():
        kind = SYMLINK
    entry = Entry(
        name=member.name,
        path=path,
        kind=kind,
        mode=member.mode & 0o7777,
        uid=member.uid,
        gid=member.gid,
        mtime_ns=int(member.mtime * 1_000_000_000),
        size=member.size,
        devmajor=member.devmajor,
        devminor=member.devminor,
    )
    if member.pax_headers:
        entry.xattrs = member_xattrs(member.pax_headers)
    if kind == SYMLINK:
        if not member.linkname or "\x00" in member.linkname:
            raise LayerError(member.name, "symlink has no valid target")
        entry.linkname = member.linkname
    elif kind == HARDLINK:
        entry.linkname = hardlink_target(member.name, member.linkname)
        if entry.linkname == path:
            raise LayerError(member.name, "hardlink points to itself")
    elif kind != DIR and not path:
        raise LayerError(member.name, f"a {kind} cannot replace the root directory")
    return entry
