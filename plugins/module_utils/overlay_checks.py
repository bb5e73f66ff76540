# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Checks made before an overlay is mounted, so a failure names its cause.

A failed ``mount -t overlay`` only says "wrong fs type, bad option" or "special device
does not exist"; the real reason goes to the kernel log, which is not always readable.
These checks look at the layers first and raise :class:`OverlayError` with the object,
the cause and a fix.  They read the file system; the only thing they write is a probe
file in the workdir (removed at once), and only when ``probe`` is true.
"""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
from pathlib import Path

from ansible_collections.lapis.layers.plugins.module_utils.mountinfo import MountEntry
from ansible_collections.lapis.layers.plugins.module_utils.overlay import (
    OverlayError,
    OverlaySpec,
)

FILESYSTEMS = "/proc/filesystems"
# Entries overlayfs itself leaves in a workdir it used before.
WORKDIR_OWN_ENTRIES = frozenset(("work", "index", "incompat"))
# File systems that cannot hold an upper layer: read-only ones, and ones without extended
# attributes, hard links or d_type.  Others are probed (see :func:`probe_xattrs`).
UNSUPPORTED_UPPER = frozenset(
    ("vfat", "msdos", "exfat", "iso9660", "squashfs", "erofs", "cramfs", "proc", "sysfs")
)


def kernel_has_overlay(filesystems_text: str) -> bool:
    """True when ``/proc/filesystems`` lists ``overlay``."""
    return any(line.split()[-1:] == ["overlay"] for line in filesystems_text.splitlines())


def check_kernel(path: str = FILESYSTEMS) -> None:
    """Raise when the running kernel has no overlay file system."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError as exc:
        raise OverlayError(f"cannot read {path}: {exc.strerror}") from exc
    if not kernel_has_overlay(text):
        raise OverlayError(
            "the kernel has no overlay file system (overlay is not in /proc/filesystems)",
            "Load the module with 'modprobe overlay', or use a kernel built with CONFIG_OVERLAY_FS",
        )


def missing_dirs(spec: OverlaySpec) -> list[str]:
    """The mount point, upperdir and workdir that do not exist yet (create_dirs makes them)."""
    wanted = [spec.path, spec.upperdir, spec.workdir]
    return [path for path in wanted if path is not None and not os.path.lexists(path)]


def check_layers(spec: OverlaySpec, entries: list[MountEntry], probe: bool) -> None:
    """Check the lowers, the mount point, and the upperdir/workdir pair."""
    for lower in spec.lowerdirs:
        _require_dir("lowerdir", lower, "Create it, or fix the path in lowerdirs")
    if os.path.lexists(spec.path):
        _require_dir("mount point", spec.path, "Remove the file or choose another path")
    if spec.upperdir is None or spec.workdir is None:
        return
    if not (os.path.lexists(spec.upperdir) and os.path.lexists(spec.workdir)):
        return  # check mode, to be created: nothing to look at yet
    _require_dir("upperdir", spec.upperdir, "Fix the path in upperdir")
    _require_dir("workdir", spec.workdir, "Fix the path in workdir")
    check_nesting(spec.upperdir, spec.workdir)
    check_same_filesystem(spec.upperdir, spec.workdir)
    check_workdir_empty(spec.workdir)
    check_upper_filesystem(spec.upperdir, entries)
    if probe:
        namespace = "user" if "userxattr" in spec.options else "trusted"
        probe_xattrs(spec.upperdir, spec.workdir, namespace)
        check_d_type(spec.upperdir, spec.workdir)


def _require_dir(name: str, path: str, hint: str) -> None:
    if not os.path.lexists(path):
        raise OverlayError(f"{name} {path} does not exist", hint)
    if not Path(path).is_dir():
        raise OverlayError(f"{name} {path} is not a directory", hint)


def check_nesting(upperdir: str, workdir: str) -> None:
    """upperdir and workdir must be separate trees (the kernel refuses nesting)."""
    upper, work = os.path.realpath(upperdir), os.path.realpath(workdir)
    if upper == work:
        raise OverlayError(
            f"workdir {workdir} is the same directory as upperdir",
            "Use two sibling directories on one file system, e.g. DIR/upper and DIR/work",
        )
    for inner, outer, inner_name, outer_name in (
        (work, upper, "workdir", "upperdir"),
        (upper, work, "upperdir", "workdir"),
    ):
        if inner.startswith(outer.rstrip("/") + "/"):
            raise OverlayError(
                f"{inner_name} {inner} is inside {outer_name} {outer}",
                "overlayfs needs them as separate trees: use siblings such as "
                "DIR/upper and DIR/work",
            )


def check_same_filesystem(upperdir: str, workdir: str) -> None:
    """upperdir and workdir must be on one file system."""
    if Path(upperdir).stat().st_dev != Path(workdir).stat().st_dev:
        raise OverlayError(
            f"upperdir {upperdir} and workdir {workdir} are on different file systems",
            "overlayfs moves files from workdir into upperdir by rename; put both on the "
            "same file system",
        )


def check_workdir_empty(workdir: str) -> None:
    """The workdir may hold only what overlayfs itself left there."""
    foreign = sorted({entry.name for entry in Path(workdir).iterdir()} - WORKDIR_OWN_ENTRIES)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise OverlayError(
            f"workdir {workdir} is not empty (it contains {shown})",
            "overlayfs needs an empty workdir of its own: give an empty directory",
        )


def filesystem_type(path: str, entries: list[MountEntry]) -> str | None:
    """The type of the file system holding ``path``, from the mount table."""
    st_dev = Path(path).stat().st_dev
    device = f"{os.major(st_dev)}:{os.minor(st_dev)}"
    types = [entry.fstype for entry in entries if entry.device == device]
    return types[-1] if types else None


def check_upper_filesystem(upperdir: str, entries: list[MountEntry]) -> None:
    """Refuse file system types the kernel does not accept as upper layer."""
    fstype = filesystem_type(upperdir, entries)
    if fstype in UNSUPPORTED_UPPER:
        raise OverlayError(
            f"upperdir {upperdir} is on a {fstype} file system, which overlayfs cannot use "
            "as upper layer (it needs extended attributes, d_type and tmpfile support)",
            "Put upperdir and workdir on ext4, xfs (ftype=1), btrfs or tmpfs",
        )


def probe_xattrs(upperdir: str, workdir: str, namespace: str) -> None:
    """Write and remove an extended attribute in the workdir (same file system as upper)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".lapis-probe-", dir=workdir)
    except OSError as exc:
        raise _probe_error(upperdir, workdir, namespace, exc) from exc
    try:
        os.setxattr(probe, f"{namespace}.lapis_probe", b"1")
    except OSError as exc:
        raise _probe_error(upperdir, workdir, namespace, exc) from exc
    finally:
        os.close(fd)
        Path(probe).unlink()


def _probe_error(upperdir: str, workdir: str, namespace: str, exc: OSError) -> OverlayError:
    if exc.errno == errno.EROFS:
        return OverlayError(
            f"upperdir {upperdir} is on a read-only file system",
            "Remount it read-write, or omit upperdir and workdir for a read-only union",
        )
    if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
        hint = "Put upperdir and workdir on ext4, xfs, btrfs or tmpfs"
        if namespace == "user":
            hint += " (tmpfs supports user.* attributes from Linux 6.6)"
        return OverlayError(
            f"upperdir {upperdir}: its file system does not support {namespace}.* extended "
            "attributes, which overlayfs needs for whiteouts and opaque directories",
            hint,
        )
    if exc.errno == errno.EPERM and namespace == "trusted":
        return OverlayError(
            f"upperdir {upperdir}: setting trusted.* extended attributes is not permitted",
            "Run as root, or add the userxattr option (user.* attributes, Linux 5.11+)",
        )
    return OverlayError(f"workdir {workdir}: cannot write a probe file: {exc.strerror}")


class _Dirent64(ctypes.Structure):
    """``struct dirent64`` of glibc and musl (the same layout on every Linux architecture)."""

    _fields_ = (
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    )


DT_UNKNOWN = 0


def directory_types(directory: str) -> dict[str, int] | None:
    """``d_type`` of each entry as readdir(3) reports it; ``None`` when libc cannot be used."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        opendir, readdir, closedir = libc.opendir, libc.readdir64, libc.closedir
    except (OSError, AttributeError):
        return None
    opendir.restype = ctypes.c_void_p
    readdir.argtypes = closedir.argtypes = (ctypes.c_void_p,)
    readdir.restype = ctypes.POINTER(_Dirent64)
    handle = opendir(os.fsencode(directory))
    if not handle:
        return None
    types: dict[str, int] = {}
    try:
        while True:
            entry = readdir(handle)
            if not entry:
                return types
            types[os.fsdecode(entry.contents.d_name)] = entry.contents.d_type
    finally:
        closedir(handle)


def check_d_type(upperdir: str, workdir: str) -> None:
    """The upper file system must report file types in readdir (``d_type``).

    Without it (xfs made with ftype=0) the kernel only warns, and whiteouts in the upper
    layer stop working.  A probe directory in the workdir is listed and removed again.
    """
    probe = tempfile.mkdtemp(prefix=".lapis-dtype-", dir=workdir)
    try:
        types = directory_types(workdir)
    finally:
        Path(probe).rmdir()
    if types is not None and types.get(Path(probe).name) == DT_UNKNOWN:
        raise OverlayError(
            f"upperdir {upperdir}: its file system does not report file types in directory "
            "listings (d_type), which overlayfs needs to find whiteouts",
            "Put upperdir and workdir on a file system with d_type (xfs needs ftype=1)",
        )
