"""A comparable picture of a directory tree: what the layer tests compare.

``snapshot(root)`` maps every path below ``root`` to its type, permission bits,
owner, content digest or link target, device number and xattrs. Two trees are
the same root filesystem when their snapshots are equal.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

_SKIP_XATTRS = ("security.selinux",)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "dir"),
        (stat.S_ISREG, "file"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISCHR, "char"),
        (stat.S_ISBLK, "block"),
        (stat.S_ISFIFO, "fifo"),
    ):
        if test(mode):
            return name
    return "other"


def describe(path: Path, *, xattrs: bool = True, mtime: bool = False) -> dict[str, Any]:
    """One entry: type, mode, owner, content/target/device, xattrs."""
    st = path.lstat()
    kind = _kind(st.st_mode)
    info: dict[str, Any] = {
        "type": kind,
        "mode": oct(stat.S_IMODE(st.st_mode)),
        "owner": f"{st.st_uid}:{st.st_gid}",
    }
    if kind == "file":
        info["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    elif kind == "symlink":
        info["target"] = str(path.readlink())
        del info["mode"]
    elif kind in ("char", "block"):
        info["device"] = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    if xattrs:
        names = sorted(os.listxattr(path, follow_symlinks=False))
        info["xattrs"] = {
            name: os.getxattr(path, name, follow_symlinks=False).hex()
            for name in names
            if name not in _SKIP_XATTRS
        }
    if mtime and kind != "symlink":
        info["mtime"] = st.st_mtime_ns
    return info


def snapshot(root: Path, *, xattrs: bool = True, mtime: bool = False) -> dict[str, Any]:
    """Every path below ``root`` (relative, sorted) described by :func:`describe`."""
    found: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            found[str(full.relative_to(root))] = describe(full, xattrs=xattrs, mtime=mtime)
    return dict(sorted(found.items()))


def hardlink_groups(root: Path) -> list[list[str]]:
    """Paths that share an inode (groups of two or more), sorted."""
    inodes: dict[int, list[str]] = {}
    for dirpath, _dirs, filenames in os.walk(root):
        for name in filenames:
            full = Path(dirpath) / name
            st = full.lstat()
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                inodes.setdefault(st.st_ino, []).append(str(full.relative_to(root)))
    return sorted(sorted(group) for group in inodes.values() if len(group) > 1)
