# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Writing checked entries into a root: one handler per entry kind and per format.

:class:`LayerWriter` takes :class:`~layer_policy.Entry` objects (from a tar member or
from an overlay-format layer directory) and writes them below its root, every
parent resolved by :class:`~layer_tree.ConfinedTree`. The last path component is
never followed: an existing entry in the way is removed (a directory with its
contents) unless both are directories, which are merged.

Whiteouts and opaque markers depend on the format:

- overlay: ``NAME`` becomes a 0/0 character device, an opaque directory gets
  ``trusted.overlay.opaque=y``;
- flat: the lower ``NAME`` is deleted, an opaque directory loses its lower
  entries. Entries this layer wrote itself are kept either way.

``flatten_layers`` replays overlay-format layer directories onto a flat root.
"""

from __future__ import annotations

import errno
import functools
import os
import posixpath
import stat
from pathlib import Path
from typing import Callable, Iterable

from ansible_collections.lapis.layers.plugins.module_utils.layer_policy import (
    BLOCK,
    CHAR,
    DEVICE_TYPES,
    DIR,
    FIFO,
    FILE,
    HARDLINK,
    OPAQUE,
    OPAQUE_XATTR,
    OVERLAY_XATTR_PREFIX,
    SYMLINK,
    WHITEOUT,
    Entry,
    LayerError,
)
from ansible_collections.lapis.layers.plugins.module_utils.layer_tree import (
    DIR_FLAGS,
    ConfinedTree,
    Dir,
)

OVERLAY = "overlay"
FLAT = "flat"
MODES = (OVERLAY, FLAT)
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
Copier = Callable[[int], None]


class LayerWriter:
    """Applies the entries of one layer to ``root`` in ``overlay`` or ``flat`` format."""

    def __init__(self, root: str, mode: str) -> None:
        self.mode = mode
        self.tree = ConfinedTree(root)
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        self._dir_times: list[tuple[str, int]] = []
        self._written: set[str] = set()

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.warnings.append(message)

    def close(self) -> None:
        self.tree.close()

    def apply(self, entry: Entry, copy: Copier | None = None) -> None:
        """Write one entry; ``copy(fd)`` writes a regular file's data."""
        self.tree.begin()
        try:
            self._dispatch(entry, copy)
        except OSError as exc:
            raise LayerError(entry.name, f"cannot write {entry.path or '/'!r}: {exc}") from exc
        if self.mode == FLAT and entry.kind not in (WHITEOUT, OPAQUE):
            self._written.add(entry.path)

    def _dispatch(self, entry: Entry, copy: Copier | None) -> None:
        kind = entry.kind
        if kind == FILE:
            self._file(entry, copy)
        elif kind == DIR:
            self._dir(entry)
        elif kind == SYMLINK:
            self._symlink(entry)
        elif kind == HARDLINK:
            self._hardlink(entry)
        elif kind in DEVICE_TYPES:
            self._device(entry)
        elif kind == WHITEOUT:
            self._whiteout(entry)
        elif kind == OPAQUE:
            self._opaque(entry)
        else:
            raise LayerError(entry.name, f"unsupported entry kind {kind!r}")

    def _where(self, entry: Entry) -> tuple[Dir, str]:
        parent = self.tree.parent(entry.path, entry.name)
        if parent is None:  # pragma: no cover - create=True always yields a directory
            raise LayerError(entry.name, "parent directory is missing")
        return parent, posixpath.basename(entry.path)

    def _clear(self, parent: Dir, name: str, keep_dir: bool = False) -> bool:
        """Remove what is at ``name`` (never following it); True if a directory was kept."""
        try:
            st = os.lstat(name, dir_fd=parent.fd)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            remove_tree(parent.fd, name)
            self.tree.forget()
        else:
            os.unlink(name, dir_fd=parent.fd)
            if stat.S_ISLNK(st.st_mode):
                self.tree.forget()
        return False

    # -- ordinary entries ------------------------------------------------------------

    def _file(self, entry: Entry, copy: Copier | None) -> None:
        parent, name = self._where(entry)
        try:
            fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent.fd)
        except FileExistsError:
            self._clear(parent, name)
            fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent.fd)
        try:
            if copy is not None:
                copy(fd)
            os.fchown(fd, entry.uid, entry.gid)
            os.fchmod(fd, entry.mode)
            for key, value in entry.xattrs.items():
                self._setxattr(fd, key, value, entry)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)

    def _dir(self, entry: Entry) -> None:
        if not entry.path:
            self._dir_meta(self.tree.root.fd, entry)
            return
        parent, name = self._where(entry)
        if not self._clear(parent, name, keep_dir=True):
            os.mkdir(name, 0o700, dir_fd=parent.fd)
        fd = os.open(name, DIR_FLAGS, dir_fd=parent.fd)
        try:
            self._dir_meta(fd, entry)
        finally:
            os.close(fd)

    def _dir_meta(self, fd: int, entry: Entry) -> None:
        os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, entry.mode)
        for key, value in entry.xattrs.items():
            self._setxattr(fd, key, value, entry)
        self._dir_times.append((entry.path, entry.mtime_ns))

    def _symlink(self, entry: Entry) -> None:
        parent, name = self._where(entry)
        try:
            os.symlink(entry.linkname, name, dir_fd=parent.fd)
        except FileExistsError:
            self._clear(parent, name)
            os.symlink(entry.linkname, name, dir_fd=parent.fd)
        self._node_meta(parent, name, entry, chmod=False)

    def _device(self, entry: Entry) -> None:
        parent, name = self._where(entry)
        kind = DEVICE_TYPES[entry.kind]
        device = os.makedev(entry.devmajor, entry.devminor) if entry.kind != FIFO else 0
        try:
            os.mknod(name, kind | 0o600, device, dir_fd=parent.fd)
        except FileExistsError:
            self._clear(parent, name)
            os.mknod(name, kind | 0o600, device, dir_fd=parent.fd)
        self._node_meta(parent, name, entry, chmod=True)

    def _node_meta(self, parent: Dir, name: str, entry: Entry, chmod: bool) -> None:
        """Owner, mode, xattrs and mtime of a node that cannot be opened (never followed)."""
        os.chown(name, entry.uid, entry.gid, dir_fd=parent.fd, follow_symlinks=False)
        if chmod:  # the node was just created here by mknod: it is not a symlink
            os.chmod(name, entry.mode, dir_fd=parent.fd)
        for key, value in entry.xattrs.items():
            self._setxattr(_proc_path(parent, name), key, value, entry)
        ns = (entry.mtime_ns, entry.mtime_ns)
        os.utime(name, ns=ns, dir_fd=parent.fd, follow_symlinks=False)

    def _setxattr(self, where: int | str, key: str, value: bytes, entry: Entry) -> None:
        """Set one xattr (never through a symlink); unsupported ones are warned about once."""
        try:
            if isinstance(where, int):
                os.setxattr(where, key, value)
            else:
                os.setxattr(where, key, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                raise
            namespace = key.split(".", 1)[0]
            self.warn_once(
                f"xattr:{namespace}",
                f"xattrs in the {namespace}.* namespace could not be set here "
                f"(first on {entry.name!r}: {exc.strerror}); they were skipped",
            )

    def _hardlink(self, entry: Entry) -> None:
        source = self.tree.parent(entry.linkname, entry.name, create=False)
        source_name = posixpath.basename(entry.linkname)
        where = f"hardlink target {entry.linkname!r}"
        if source is None:
            raise LayerError(entry.name, f"{where} does not exist")
        try:
            st = os.lstat(source_name, dir_fd=source.fd)
        except FileNotFoundError:
            raise LayerError(entry.name, f"{where} does not exist") from None
        if stat.S_ISDIR(st.st_mode):
            raise LayerError(entry.name, f"{where} is a directory")
        parent, name = self._where(entry)
        try:
            os.link(source_name, name, src_dir_fd=source.fd, dst_dir_fd=parent.fd,
                    follow_symlinks=False)  # fmt: skip
        except FileExistsError:
            if os.lstat(name, dir_fd=parent.fd).st_ino == st.st_ino:
                return
            self._clear(parent, name)
            os.link(source_name, name, src_dir_fd=source.fd, dst_dir_fd=parent.fd,
                    follow_symlinks=False)  # fmt: skip

    # -- whiteouts and opaque directories --------------------------------------------

    def _whiteout(self, entry: Entry) -> None:
        if self.mode == OVERLAY:
            parent, name = self._where(entry)
            try:
                os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent.fd)
            except FileExistsError:
                return  # this layer's own entry: a whiteout only hides lower layers
            return
        if entry.path in self._written:
            return
        found = self.tree.parent(entry.path, entry.name, create=False)
        if found is not None:
            self._clear(found, posixpath.basename(entry.path))

    def _opaque(self, entry: Entry) -> None:
        found = self.tree.directory(entry.path, entry.name)
        if found is None:  # pragma: no cover - create=True always yields a directory
            raise LayerError(entry.name, "opaque directory is missing")
        if self.mode == OVERLAY:
            os.setxattr(found.fd, OPAQUE_XATTR, b"y")
            return
        prefix = entry.path + "/" if entry.path else ""
        keep = _with_ancestors(path for path in self._written if path.startswith(prefix))
        if self._clear_lower(found.fd, entry.path, keep):
            self.tree.forget()

    def _clear_lower(self, fd: int, path: str, keep: set[str]) -> bool:
        """Remove entries below ``path`` that this layer did not write; True if any went."""
        removed = False
        for name in _names(fd):
            child = posixpath.join(path, name) if path else name
            st = os.lstat(name, dir_fd=fd)
            if child not in keep:
                if stat.S_ISDIR(st.st_mode):
                    remove_tree(fd, name)
                else:
                    os.unlink(name, dir_fd=fd)
                removed = True
            elif stat.S_ISDIR(st.st_mode):
                sub = os.open(name, DIR_FLAGS, dir_fd=fd)
                try:
                    removed = self._clear_lower(sub, child, keep) or removed
                finally:
                    os.close(sub)
        return removed

    # -- the end of a layer ----------------------------------------------------------

    def finish(self) -> None:
        """Set directories' mtimes, deepest first, now that their contents are written."""
        self.tree.begin()
        for path, mtime_ns in sorted(self._dir_times, key=lambda item: -item[0].count("/")):
            ns = (mtime_ns, mtime_ns)
            if not path:
                os.utime(self.tree.root.fd, ns=ns)
                continue
            parent = self.tree.parent(path, path, create=False)
            if parent is None:
                continue
            try:
                os.utime(posixpath.basename(path), ns=ns, dir_fd=parent.fd, follow_symlinks=False)
            except FileNotFoundError:
                continue


def _with_ancestors(paths: Iterable[str]) -> set[str]:
    keep: set[str] = set()
    for written in paths:
        path = written
        while path and path not in keep:
            keep.add(path)
            path = posixpath.dirname(path)
    return keep


def _names(fd: int) -> list[str]:
    with os.scandir(fd) as entries:
        return [entry.name for entry in entries]


def _proc_path(parent: Dir, name: str) -> str:
    return f"/proc/self/fd/{parent.fd}/{name}"


def remove_tree(dir_fd: int, name: str) -> None:
    """Remove directory ``name`` under ``dir_fd`` with its contents, never following symlinks."""
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    try:
        for child in _names(fd):
            try:
                os.unlink(child, dir_fd=fd)
            except IsADirectoryError:
                remove_tree(fd, child)
            except OSError as exc:
                if exc.errno not in (errno.EISDIR, errno.EPERM):
                    raise
                remove_tree(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


# -- overlay-format layer directories onto a flat root ----------------------------------


def flatten_layers(layer_dirs: list[str], dest: str) -> None:
    """A flat root filesystem in ``dest`` from overlay-format layer directories, bottom-first.

    Whiteout character devices delete, opaque directories drop their lower entries,
    everything else is copied with its owner, mode, xattrs and mtime; hardlinks
    inside a layer stay hardlinks. The layer directories' own roots carry no metadata
    into ``dest``.
    """
    Path(dest).mkdir(mode=0o755, exist_ok=True)
    for layer in layer_dirs:
        writer = LayerWriter(dest, FLAT)
        try:
            source = os.open(layer, DIR_FLAGS)
            try:
                if _get_xattr(source, OPAQUE_XATTR) == b"y":
                    writer.apply(Entry("/", "", OPAQUE))
                _replay_dir(writer, source, "", {})
            finally:
                os.close(source)
            writer.finish()
        finally:
            writer.close()


def _replay_dir(writer: LayerWriter, fd: int, path: str, links: dict[tuple[int, int], str]) -> None:
    for name in sorted(_names(fd)):
        child = posixpath.join(path, name) if path else name
        st = os.lstat(name, dir_fd=fd)
        entry = _entry_from_stat(fd, name, child, st, links)
        if entry.kind == FILE:
            src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                writer.apply(entry, functools.partial(_copy_file, src, size=st.st_size))
            finally:
                os.close(src)
            continue
        writer.apply(entry)
        if entry.kind != DIR:
            continue
        sub = os.open(name, DIR_FLAGS, dir_fd=fd)
        try:
            if _get_xattr(sub, OPAQUE_XATTR) == b"y":
                writer.apply(Entry(child, child, OPAQUE))
            _replay_dir(writer, sub, child, links)
        finally:
            os.close(sub)


def _entry_from_stat(
    fd: int, name: str, path: str, st: os.stat_result, links: dict[tuple[int, int], str]
) -> Entry:
    mode = st.st_mode
    if stat.S_ISCHR(mode) and st.st_rdev == 0:
        return Entry(path, path, WHITEOUT)
    entry = Entry(path, path, FILE, stat.S_IMODE(mode), st.st_uid, st.st_gid, st.st_mtime_ns)
    if not stat.S_ISDIR(mode) and st.st_nlink > 1:
        first = links.setdefault((st.st_dev, st.st_ino), path)
        if first != path:
            entry.kind, entry.linkname = HARDLINK, first
            return entry
    if stat.S_ISDIR(mode):
        entry.kind = DIR
    elif stat.S_ISLNK(mode):
        entry.kind, entry.linkname = SYMLINK, os.readlink(name, dir_fd=fd)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        entry.kind = CHAR if stat.S_ISCHR(mode) else BLOCK
        entry.devmajor, entry.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(mode):
        entry.kind = FIFO
    entry.xattrs = _xattrs(fd, name)
    return entry


def _xattrs(fd: int, name: str) -> dict[str, bytes]:
    where = f"/proc/self/fd/{fd}/{name}"
    found: dict[str, bytes] = {}
    for key in os.listxattr(where, follow_symlinks=False):
        if not key.startswith(OVERLAY_XATTR_PREFIX):
            found[key] = os.getxattr(where, key, follow_symlinks=False)
    return found


def _get_xattr(fd: int, key: str) -> bytes | None:
    try:
        return os.getxattr(fd, key)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise


def _copy_file(src: int, dst: int, *, size: int) -> None:
    offset = 0
    while offset < size:
        try:
            done = os.copy_file_range(src, dst, size - offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            done = os.sendfile(dst, src, None, size - offset)
        if done == 0:
            break
        offset += done
