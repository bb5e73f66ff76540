# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The union filesystem served over FUSE, with the kernel overlay's semantics and format.

Layers are plain directories: one optional upperdir (index 0) above the lowerdirs
(indices 1..n, topmost first). A name resolves top-down; a whiteout (0/0 character
device) ends the search, a directory keeps merging with lower directories until one is
opaque, anything else ends it. Every change lands in the upperdir, after a copy-up that
preserves mode, owner, times, xattrs and holes, done in ``workdir/work`` and renamed
into place, exactly as the kernel does. Renaming a directory that exists in a lowerdir
fails with EXDEV, as the kernel does without ``redirect_dir``.

FUSE node ids stand for union paths; a path that is removed and created again gets a
new id, so the kernel never sees one id change type. Resolutions are cached and
invalidated by every change (all changes go through this process; the upperdir must
not be changed behind the mount's back, as with the kernel).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import itertools
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, TypeVar, Union

from .options import OverlayConfig, is_private_xattr, is_whiteout, opaque_xattr

try:
    import pyfuse3

    HAS_PYFUSE3 = True
    PYFUSE3_IMPORT_ERROR: Optional[ImportError] = None
    _Base: Any = pyfuse3.Operations
except ImportError as _exc:  # the module reports missing_required_lib("pyfuse3")
    pyfuse3 = None  # type: ignore[assignment]
    HAS_PYFUSE3 = False
    PYFUSE3_IMPORT_ERROR = _exc
    _Base = object

log = logging.getLogger("lapis.fuse_overlay")

LOWER_TIMEOUT = 3600.0  # lowerdirs never change: let the kernel cache their entries
UPPER_ENTRY_TIMEOUT = 1.0
UPPER_ATTR_TIMEOUT = 0.0  # hardlinked upper files share attributes: always ask
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
ROOT_INODE = 1
CACHE_LIMIT = 500_000
LISTING_LIMIT = 20_000
Listing = List[Tuple[str, int, os.stat_result]]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_AT_FDCWD = -100

F = TypeVar("F", bound=Callable[..., Any])


def renameat2(old: str, new: str, flags: int) -> None:
    """rename(2) with flags (RENAME_EXCHANGE, RENAME_NOREPLACE), which os.rename lacks."""
    res = _libc.renameat2(_AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new), flags)
    if res != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old)


@dataclass
class Entry:
    """Where a union path lives: the topmost real object and, for a directory, all layers."""

    layer: int
    real: str
    st: os.stat_result
    dirs: List[Tuple[int, str]] = field(default_factory=list)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)

    @property
    def merged(self) -> bool:
        """A directory present in the upperdir and in at least one lowerdir."""
        return len(self.dirs) > 1 and self.dirs[0][0] == 0


@dataclass
class Node:
    """A FUSE node id: the union path it stands for and the kernel's reference count."""

    ino: int
    path: Optional[str]
    lookups: int = 0
    handles: Set[int] = field(default_factory=set)
    copied_up: bool = False


@dataclass
class Handle:
    """An open file: the real file descriptor and whether it still points into a lowerdir."""

    fd: int
    node: Node
    lower: bool
    flags: int


Child = Tuple[bytes, str, int, os.stat_result]  # name, union path, layer, stat


@dataclass
class DirHandle:
    """An open directory: "." and ".." (name, node id, stat), then the merged listing."""

    dots: List[Tuple[bytes, int, os.stat_result]]
    children: List[Child]


def _fuse_errors(func: F) -> F:
    """Turn OSError into the FUSEError pyfuse3 sends back with the same errno."""

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await func(*args, **kwargs)
        except OSError as exc:
            if exc.errno is None:
                raise
            raise pyfuse3.FUSEError(exc.errno) from None

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper  # type: ignore[return-value]


def _join(parent: str, name: str) -> str:
    return name if not parent else parent + "/" + name


def _split(path: str) -> Tuple[str, str]:
    parent, sep, name = path.rpartition("/")
    return (parent, name) if sep else ("", name)


class UnionCore:
    """Layer resolution, copy-up and the on-disk format, without any FUSE types."""

    def __init__(self, config: OverlayConfig) -> None:
        self.config = config
        self.upper = config.upperdir
        self.layers: List[str] = [config.upperdir or "", *config.lowerdirs]
        self.work = config.workdir.rstrip("/") + "/work" if config.workdir else None
        self.opaque_name = opaque_xattr(config.userxattr)
        self._cache: Dict[str, Optional[Entry]] = {}
        self._tmp = itertools.count()
        self._listings: Dict[Tuple[Tuple[int, str], ...], Listing] = {}
        if self.work is not None:
            Path(self.work).mkdir(mode=0o700, parents=True, exist_ok=True)

    # -- resolution -------------------------------------------------------------------

    def _root(self) -> Entry:
        dirs = [(i, d) for i, d in enumerate(self.layers) if d]
        top = dirs[0]
        return Entry(top[0], top[1], os.lstat(top[1]), dirs)

    def _is_opaque(self, real: str) -> bool:
        try:
            return os.getxattr(real, self.opaque_name, follow_symlinks=False) == b"y"
        except OSError:
            return False

    def resolve(self, path: str) -> Optional[Entry]:
        """The entry for a union path, or None when the union has no such name."""
        try:
            return self._cache[path]
        except KeyError:
            pass
        if not path:
            entry: Optional[Entry] = self._root()
        else:
            parent_path, name = _split(path)
            parent = self.resolve(parent_path)
            entry = None
            if parent is not None and parent.is_dir:
                entry = self._lookup_in(parent, name)
        if len(self._cache) > CACHE_LIMIT:
            self._cache.clear()
        self._cache[path] = entry
        return entry

    def _lookup_in(self, parent: Entry, name: str) -> Optional[Entry]:
        found: Optional[Entry] = None
        for layer, directory in parent.dirs:
            real = directory + "/" + name
            try:
                st = os.lstat(real)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if is_whiteout(st):
                break
            if found is None:
                found = Entry(layer, real, st)
                if not stat.S_ISDIR(st.st_mode):
                    break
            elif not stat.S_ISDIR(st.st_mode):
                break
            found.dirs.append((layer, real))
            if self._is_opaque(real):
                break
        return found

    def require(self, path: str) -> Entry:
        entry = self.resolve(path)
        if entry is None:
            raise OSError(errno.ENOENT, "no such union path", path)
        return entry

    def stat_of(self, entry: Entry) -> os.stat_result:
        """Fresh attributes for upper entries, the cached ones for lower entries."""
        if entry.layer == 0:
            entry.st = os.lstat(entry.real)
        return entry.st

    def invalidate(self, path: str, subtree: bool = False) -> None:
        self._cache.pop(path, None)
        if subtree:
            prefix = path + "/"
            for key in [k for k in self._cache if k.startswith(prefix)]:
                del self._cache[key]

    def lower_positive(self, path: str) -> bool:
        """Whether a lowerdir shows this name (so removing it needs a whiteout)."""
        parent_path, name = _split(path)
        parent = self.require(parent_path)
        for layer, directory in parent.dirs:
            if layer == 0:
                continue
            try:
                st = os.lstat(directory + "/" + name)
            except (FileNotFoundError, NotADirectoryError):
                continue
            return not is_whiteout(st)
        return False

    def list_dir(self, entry: Entry, path: Optional[str] = None) -> Listing:
        """Merged listing: ``(name, layer, stat)`` of the topmost object of each visible name.

        Listings of directories that live in lowerdirs only are kept: lowerdirs never change.
        With ``path`` (the directory's union path), a listing read afresh also resolves the
        non-directories it shows, so that opening them later needs no lstat.
        """
        key = tuple(entry.dirs)
        lower_only = bool(entry.dirs) and entry.dirs[0][0] != 0
        if lower_only:
            cached = self._listings.get(key)
            if cached is not None:
                return cached
        listing = self._merge_listing(entry)
        if lower_only:
            if len(self._listings) > LISTING_LIMIT:
                self._listings.clear()
            self._listings[key] = listing
        if path is not None:
            self._resolve_listed(path, entry, listing)
        return listing

    def _resolve_listed(self, path: str, entry: Entry, listing: Listing) -> None:
        """Cache what a lookup would find for each listed non-directory (a listing holds
        the topmost object of each name, which is the lookup's answer for a non-directory)."""
        if len(self._cache) > CACHE_LIMIT:
            self._cache.clear()
        cache = self._cache
        where = dict(entry.dirs)
        for name, layer, st in listing:
            if not stat.S_ISDIR(st.st_mode):
                child = _join(path, name)
                if child not in cache:
                    cache[child] = Entry(layer, where[layer] + "/" + name, st)

    def _merge_listing(self, entry: Entry) -> Listing:
        seen: Set[str] = set()
        listing: List[Tuple[str, int, os.stat_result]] = []
        for layer, directory in entry.dirs:
            with os.scandir(directory) as it:
                for dent in it:
                    name = dent.name
                    if name in seen:
                        continue
                    seen.add(name)
                    st = dent.stat(follow_symlinks=False)
                    if not is_whiteout(st):
                        listing.append((name, layer, st))
        return listing

    # -- upperdir helpers ---------------------------------------------------------------

    def upper_path(self, path: str) -> str:
        if self.upper is None:
            raise OSError(errno.EROFS, "read-only union (no upperdir)", path)
        return self.upper + "/" + path if path else self.upper

    def temp_name(self) -> str:
        if self.work is None:
            raise OSError(errno.EROFS, "read-only union (no workdir)")
        return f"{self.work}/#lapis{os.getpid():x}-{next(self._tmp):x}"

    def copy_up(self, path: str) -> Entry:
        """Make ``path`` an upper entry, copying parents first; returns the new entry."""
        entry = self.require(path)
        if entry.layer == 0:
            return entry
        parent_path = _split(path)[0]
        if path:
            self.copy_up(parent_path)
        target = self.upper_path(path)
        tmp = self.temp_name()
        try:
            _copy_object(entry.real, tmp, entry.st, self.config.userxattr)
            Path(tmp).rename(target)
        except BaseException:
            _remove_quietly(tmp)
            raise
        self.invalidate(path)
        return self.require(path)

    def place(self, path: str, make: Callable[[str], None], opaque: bool = False) -> None:
        """Create a new object at ``path`` in the upperdir, replacing a whiteout if any.

        ``make(real_path)`` creates the object. Over a whiteout the object is built in the
        workdir and exchanged with the whiteout (directories there are made opaque).
        """
        parent_path = _split(path)[0]
        self.copy_up(parent_path)
        target = self.upper_path(path)
        try:
            st: Optional[os.stat_result] = os.lstat(target)
        except FileNotFoundError:
            st = None
        if st is None:
            make(target)
        elif is_whiteout(st):
            tmp = self.temp_name()
            make(tmp)
            try:
                if opaque:
                    os.setxattr(tmp, self.opaque_name, b"y", follow_symlinks=False)
                renameat2(tmp, target, RENAME_EXCHANGE)
            except BaseException:
                _remove_tree(tmp)
                raise
            Path(tmp).unlink()
        else:
            raise OSError(errno.EEXIST, "exists in upperdir", path)
        self.invalidate(path, subtree=True)

    def whiteout(self, path: str) -> None:
        """Replace the upper object at ``path`` (if any) by a whiteout."""
        target = self.upper_path(path)
        tmp = self.temp_name()
        os.mknod(tmp, stat.S_IFCHR, 0)
        try:
            if os.path.lexists(target):
                renameat2(tmp, target, RENAME_EXCHANGE)
            else:
                Path(tmp).rename(target)
        except BaseException:
            _remove_quietly(tmp)
            raise
        if os.path.lexists(tmp):
            _remove_tree(tmp)

    def remove(self, path: str, entry: Entry) -> None:
        """unlink/rmdir semantics: drop the upper object, whiteout when a lowerdir shows it."""
        parent_path = _split(path)[0]
        if self.lower_positive(path):
            self.copy_up(parent_path)
            self.whiteout(path)
        elif entry.layer == 0:
            if entry.is_dir:
                _clear_whiteouts(entry.real)
                Path(entry.real).rmdir()
            else:
                Path(entry.real).unlink()
        self.invalidate(path, subtree=True)


def _remove_quietly(path: str) -> None:
    try:
        Path(path).unlink()
    except IsADirectoryError:
        _remove_tree(path)
    except OSError:
        pass


def _remove_tree(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        with os.scandir(path) as it:
            children = [dent.path for dent in it]
        for child in children:
            _remove_tree(child)
        Path(path).rmdir()
    else:
        Path(path).unlink()


def _clear_whiteouts(directory: str) -> None:
    """Remove the whiteouts an otherwise empty upper directory still holds."""
    with os.scandir(directory) as it:
        for dent in it:
            if is_whiteout(dent.stat(follow_symlinks=False)):
                Path(dent.path).unlink()


def _copy_object(src: str, dst: str, st: os.stat_result, userxattr: bool) -> None:
    """Copy one object (not recursively) with mode, owner, times and xattrs."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        _copy_file(src, dst, st, userxattr)
        return
    if stat.S_ISDIR(mode):
        Path(dst).mkdir(0o700)
    elif stat.S_ISLNK(mode):
        Path(dst).symlink_to(Path(src).readlink())
    else:
        os.mknod(dst, stat.S_IFMT(mode) | 0o600, st.st_rdev)
    _copy_xattrs(src, dst, userxattr)
    os.lchown(dst, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(mode):
        Path(dst).chmod(stat.S_IMODE(mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_file(src: str, dst: str, st: os.stat_result, userxattr: bool) -> None:
    """Copy data extent by extent so that holes stay holes, then xattrs, owner, mode and
    times, all through the two open descriptors."""
    sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if _copy_extents(sfd, dfd, st.st_size) < st.st_size:
                os.ftruncate(dfd, st.st_size)  # the file ends in a hole
            _copy_xattrs(sfd, dfd, userxattr)
            os.fchown(dfd, st.st_uid, st.st_gid)
            os.fchmod(dfd, stat.S_IMODE(st.st_mode))
            os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def _copy_extents(sfd: int, dfd: int, size: int) -> int:
    """Copy the data extents below ``size``; returns the offset after the last one copied."""
    offset = end = 0
    while offset < size:
        try:
            data = os.lseek(sfd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return end
            raise
        hole = os.lseek(sfd, data, os.SEEK_HOLE)
        pos = data
        while pos < hole:
            copied = os.copy_file_range(sfd, dfd, hole - pos, pos, pos)
            if copied == 0:
                return pos
            pos += copied
        end = offset = hole
    return end


def _copy_xattrs(src: Union[str, int], dst: Union[str, int], userxattr: bool) -> None:
    """Copy the xattrs users see, between two paths (symlinks themselves) or two descriptors."""
    follow = isinstance(src, int)  # a descriptor takes no follow_symlinks=False
    try:
        names = os.listxattr(src, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for name in names:
        if is_private_xattr(name, userxattr):
            continue
        value = os.getxattr(src, name, follow_symlinks=follow)
        os.setxattr(dst, name, value, follow_symlinks=follow)


def _open_real(real: str, flags: int, lower: bool) -> int:
    """Open the real file; a lower one with O_NOATIME when allowed, as the kernel overlay
    does, so that reading through the union leaves the lowerdir as it was (and the first
    read of a file costs no inode update)."""
    if lower:
        try:
            return os.open(real, flags | os.O_NOFOLLOW | os.O_NOATIME)
        except OSError as exc:
            if exc.errno != errno.EPERM:  # EPERM: not the file's owner, no CAP_FOWNER
                raise
    return os.open(real, flags | os.O_NOFOLLOW)


class UnionOperations(_Base):
    """pyfuse3 request handlers over a ``UnionCore``."""

    def __init__(self, config: OverlayConfig) -> None:
        super().__init__()
        self.core = UnionCore(config)
        self.nodes: Dict[int, Node] = {ROOT_INODE: Node(ROOT_INODE, "", lookups=1)}
        self.by_path: Dict[str, int] = {"": ROOT_INODE}
        self.handles: Dict[int, Handle] = {}
        self.dir_handles: Dict[int, DirHandle] = {}
        self._kept_children: Dict[str, Tuple[Listing, List[Child]]] = {}
        self._next_ino = itertools.count(ROOT_INODE + 1)
        self._next_fh = itertools.count(1)
        self._lower_attrs: Dict[int, Tuple[os.stat_result, Any]] = {}

    # -- nodes ----------------------------------------------------------------------------

    def _path(self, ino: int) -> str:
        node = self.nodes.get(ino)
        if node is None or node.path is None:
            raise OSError(errno.ENOENT, "stale node", str(ino))
        return node.path

    def _node_for(self, path: str) -> Node:
        ino = self.by_path.get(path)
        if ino is None:
            ino = next(self._next_ino)
            self.nodes[ino] = Node(ino, path)
            self.by_path[path] = ino
        return self.nodes[ino]

    def _detach(self, path: str, subtree: bool = False) -> None:
        """The union no longer has ``path``: its node keeps serving open files only."""
        paths = [path]
        if subtree:
            prefix = path + "/"
            paths += [p for p in self.by_path if p.startswith(prefix)]
        for p in paths:
            ino = self.by_path.pop(p, None)
            if ino is not None:
                node = self.nodes[ino]
                node.path = None
                self._maybe_drop(node)

    def _move(self, old: str, new: str, is_dir: bool) -> None:
        moves = [(old, new)]
        if is_dir:
            prefix = old + "/"
            moves += [(p, new + p[len(old) :]) for p in self.by_path if p.startswith(prefix)]
        inos = [(self.by_path.pop(o, None), n) for o, n in moves]
        for ino, n in inos:
            if ino is not None:
                self.nodes[ino].path = n
                self.by_path[n] = ino

    def _maybe_drop(self, node: Node) -> None:
        if node.lookups <= 0 and not node.handles and node.ino != ROOT_INODE:
            self.nodes.pop(node.ino, None)
            if node.path is not None and self.by_path.get(node.path) == node.ino:
                del self.by_path[node.path]

    def _attrs(self, ino: int, st: os.stat_result, layer: int) -> Any:
        if layer != 0:
            # A lowerdir object never changes: build its reply once per node id.
            cached = self._lower_attrs.get(ino)
            if cached is not None and cached[0] is st:
                return cached[1]
            attr = self._new_attrs(ino, st, layer)
            if len(self._lower_attrs) > CACHE_LIMIT:
                self._lower_attrs.clear()
            self._lower_attrs[ino] = (st, attr)
            return attr
        return self._new_attrs(ino, st, layer)

    def _new_attrs(self, ino: int, st: os.stat_result, layer: int) -> Any:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = ino
        attr.generation = 0
        attr.st_mode = st.st_mode
        attr.st_nlink = st.st_nlink
        attr.st_uid = st.st_uid
        attr.st_gid = st.st_gid
        attr.st_rdev = st.st_rdev
        attr.st_size = st.st_size
        attr.st_blksize = st.st_blksize
        attr.st_blocks = st.st_blocks
        attr.st_atime_ns = st.st_atime_ns
        attr.st_mtime_ns = st.st_mtime_ns
        attr.st_ctime_ns = st.st_ctime_ns
        if layer == 0:
            attr.entry_timeout = UPPER_ENTRY_TIMEOUT
            attr.attr_timeout = UPPER_ATTR_TIMEOUT
        else:
            attr.entry_timeout = LOWER_TIMEOUT
            attr.attr_timeout = LOWER_TIMEOUT
        return attr

    def _entry_reply(self, path: str) -> Any:
        entry = self.core.require(path)
        node = self._node_for(path)
        node.lookups += 1
        return self._attrs(node.ino, self.core.stat_of(entry), entry.layer)

    def _child(self, parent_ino: int, name: bytes) -> str:
        return _join(self._path(parent_ino), os.fsdecode(name))

    def _owner(self, path: str, real: str, ctx: Any, mode: int) -> None:
        """Give a new upper object the caller's owner, as the kernel overlay does."""
        parent_st = os.lstat(real.rpartition("/")[0] or "/")
        gid = parent_st.st_gid if parent_st.st_mode & stat.S_ISGID else ctx.gid
        if ctx.uid != 0 or gid != 0:
            os.lchown(real, ctx.uid, gid)
            if mode & (stat.S_ISUID | stat.S_ISGID) and not stat.S_ISLNK(mode):
                Path(real).chmod(stat.S_IMODE(mode))

    # -- lookups and attributes ------------------------------------------------------------

    @_fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> Any:
        if name == b".":
            path = self._path(parent_inode)
        elif name == b"..":
            path = _split(self._path(parent_inode))[0]
        else:
            path = self._child(parent_inode, name)
        return self._entry_reply(path)

    async def forget(self, inode_list: Any) -> None:
        for ino, count in inode_list:
            node = self.nodes.get(ino)
            if node is not None:
                node.lookups -= count
                self._maybe_drop(node)

    @_fuse_errors
    async def getattr(self, inode: int, ctx: Any) -> Any:
        node = self.nodes.get(inode)
        if node is not None and node.path is None and node.handles:
            fd = self.handles[next(iter(node.handles))].fd
            return self._attrs(inode, os.fstat(fd), 0)
        path = self._path(inode)
        entry = self.core.require(path)
        return self._attrs(inode, self.core.stat_of(entry), entry.layer)

    @_fuse_errors
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Optional[int], ctx: Any) -> Any:
        node = self.nodes.get(inode)
        handle = self.handles.get(fh) if fh is not None else None
        if node is not None and node.path is None and handle is not None:
            real: Any = handle.fd
        else:
            path = self._path(inode)
            entry = self.core.copy_up(path)
            node = self._node_for(path)
            node.copied_up = True
            real = entry.real
        if fields.update_size:
            os.truncate(real, attr.st_size)
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            if isinstance(real, int):
                os.fchown(real, uid, gid)
            else:
                os.lchown(real, uid, gid)
        if fields.update_mode:
            if isinstance(real, int):
                os.fchmod(real, stat.S_IMODE(attr.st_mode))
            else:
                Path(real).chmod(stat.S_IMODE(attr.st_mode))
        if fields.update_atime or fields.update_mtime:
            st = os.fstat(real) if isinstance(real, int) else os.lstat(real)
            times = (
                attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns,
            )
            if isinstance(real, int):
                os.utime(real, ns=times)
            else:
                os.utime(real, ns=times, follow_symlinks=False)
        st = os.fstat(real) if isinstance(real, int) else os.lstat(real)
        return self._attrs(inode, st, 0)

    @_fuse_errors
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        entry = self.core.require(self._path(inode))
        return os.fsencode(str(Path(entry.real).readlink()))

    @_fuse_errors
    async def statfs(self, ctx: Any) -> Any:
        top = self.core.upper or self.core.layers[1]
        sv = os.statvfs(top)
        data = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail"):
            setattr(data, name, getattr(sv, name))
        for name in ("f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(data, name, getattr(sv, name))
        return data

    # -- directories -----------------------------------------------------------------------

    @_fuse_errors
    async def opendir(self, inode: int, ctx: Any) -> int:
        path = self._path(inode)
        entry = self.core.require(path)
        if not entry.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory", path)
        parent_ino = self.by_path.get(_split(path)[0], ROOT_INODE) if path else ROOT_INODE
        dots = [(b".", inode, entry.st), (b"..", parent_ino, entry.st)]
        fh = next(self._next_fh)
        self.dir_handles[fh] = DirHandle(dots, self._children(path, entry))
        return fh

    def _children(self, path: str, entry: Entry) -> List[Child]:
        """The listing as readdir sends it; kept with the listing of a lowerdir-only directory."""
        listing = self.core.list_dir(entry, path)
        kept = self._kept_children.get(path)
        if kept is not None and kept[0] is listing:
            return kept[1]
        children = [(os.fsencode(n), _join(path, n), layer, st) for n, layer, st in listing]
        if entry.dirs[0][0] != 0:
            if len(self._kept_children) > LISTING_LIMIT:
                self._kept_children.clear()
            self._kept_children[path] = (listing, children)
        return children

    @_fuse_errors
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        handle = self.dir_handles[fh]
        reply = pyfuse3.readdir_reply
        for index in range(start_id, 2):  # "." and "..": the kernel takes no reference for them
            name, ino, st = handle.dots[index]
            if not reply(token, name, self._attrs(ino, st, 0), index + 1):
                return
        children = handle.children
        for index in range(max(start_id, 2), len(children) + 2):
            name, child, layer, st = children[index - 2]
            node = self._node_for(child)
            if not reply(token, name, self._attrs(node.ino, st, layer), index + 1):
                self._maybe_drop(node)
                return
            node.lookups += 1

    async def releasedir(self, fh: int) -> None:
        self.dir_handles.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    @_fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        path = self._child(parent_inode, name)
        if self.core.resolve(path) is not None:
            raise OSError(errno.EEXIST, "exists", path)
        self.core.place(path, lambda real: Path(real).mkdir(stat.S_IMODE(mode)), opaque=True)
        self._owner(path, self.core.upper_path(path), ctx, mode)
        return self._entry_reply(path)

    @_fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        path = self._child(parent_inode, name)
        entry = self.core.require(path)
        if not entry.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory", path)
        if self.core.list_dir(entry):
            raise OSError(errno.ENOTEMPTY, "directory not empty", path)
        self.core.remove(path, entry)
        self._detach(path, subtree=True)

    # -- creating and removing names ---------------------------------------------------------

    def _new(self, path: str, make: Callable[[str], None], ctx: Any, mode: int) -> Any:
        if self.core.resolve(path) is not None:
            raise OSError(errno.EEXIST, "exists", path)
        self.core.place(path, make)
        self._owner(path, self.core.upper_path(path), ctx, mode)
        return self._entry_reply(path)

    @_fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        path = self._child(parent_inode, name)
        return self._new(path, lambda real: os.mknod(real, mode, rdev), ctx, mode)

    @_fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        path = self._child(parent_inode, name)
        return self._new(
            path, lambda real: Path(real).symlink_to(os.fsdecode(target)), ctx, stat.S_IFLNK
        )

    @_fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        src_path = self._path(inode)
        path = self._child(new_parent_inode, new_name)
        if self.core.resolve(path) is not None:
            raise OSError(errno.EEXIST, "exists", path)
        src = self.core.copy_up(src_path)
        self.nodes[inode].copied_up = True
        self.core.place(path, lambda real: os.link(src.real, real, follow_symlinks=False))
        self.core.invalidate(src_path)
        self._forget_cached_attrs(inode)
        return self._entry_reply(path)

    def _forget_cached_attrs(self, inode: int) -> None:
        """The kernel cached a lowerdir object's attributes for long; it is an upper one now."""
        try:
            pyfuse3.invalidate_inode(inode, attr_only=True)
        except OSError as exc:  # ENOENT: the kernel no longer knows the inode
            log.debug("invalidate_inode(%d): %s", inode, exc)

    @_fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        path = self._child(parent_inode, name)
        entry = self.core.require(path)
        if entry.is_dir:
            raise OSError(errno.EISDIR, "is a directory", path)
        self.core.remove(path, entry)
        self._detach(path)

    @_fuse_errors
    async def rename(  # noqa: PLR0917 -- pyfuse3 calls this with six positional arguments
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any,
    ) -> None:
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        src = self.core.require(old)
        dst = self.core.resolve(new)
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise OSError(errno.ENOENT, "no such file", new)
            self._exchange(old, src, new, dst)
            return
        if dst is not None and flags & RENAME_NOREPLACE:
            raise OSError(errno.EEXIST, "exists", new)
        if old == new:
            return
        self._check_rename(old, src, new, dst)
        self._rename(old, src, new, dst)

    def _check_rename(self, old: str, src: Entry, new: str, dst: Optional[Entry]) -> None:
        if src.is_dir and (new + "/").startswith(old + "/"):
            raise OSError(errno.EINVAL, "cannot move a directory into itself", new)
        if dst is not None:
            if src.is_dir and not dst.is_dir:
                raise OSError(errno.ENOTDIR, "not a directory", new)
            if dst.is_dir and not src.is_dir:
                raise OSError(errno.EISDIR, "is a directory", new)
        if src.is_dir and (src.layer != 0 or src.merged):
            # Without redirect_dir the kernel cannot move a directory with lower parts.
            raise OSError(errno.EXDEV, "directory has lowerdir parts (no redirect_dir)", old)
        if dst is not None and dst.is_dir and self.core.list_dir(dst):
            raise OSError(errno.ENOTEMPTY, "directory not empty", new)

    def _rename(self, old: str, src: Entry, new: str, dst: Optional[Entry]) -> None:
        core = self.core
        src = core.copy_up(old)
        new_parent = core.copy_up(_split(new)[0])
        target = core.upper_path(new)
        whiteout_old = core.lower_positive(old)
        if src.is_dir and new_parent.merged and not core._is_opaque(src.real):
            os.setxattr(src.real, core.opaque_name, b"y", follow_symlinks=False)
        try:
            upper_st: Optional[os.stat_result] = os.lstat(target)
        except FileNotFoundError:
            upper_st = None
        if upper_st is not None and stat.S_ISDIR(upper_st.st_mode):
            _clear_whiteouts(target)
        elif upper_st is not None and is_whiteout(upper_st) and src.is_dir:
            Path(target).unlink()
        if whiteout_old:
            tmp = core.temp_name()
            os.mknod(tmp, stat.S_IFCHR, 0)
            Path(src.real).rename(target)
            Path(tmp).rename(src.real)
        else:
            Path(src.real).rename(target)
        core.invalidate(old, subtree=True)
        core.invalidate(new, subtree=True)
        self._detach(new, subtree=True)
        self._move(old, new, src.is_dir)

    def _exchange(self, old: str, src: Entry, new: str, dst: Entry) -> None:
        core = self.core
        for path, entry in ((old, src), (new, dst)):
            if entry.is_dir and (entry.layer != 0 or entry.merged):
                raise OSError(errno.EXDEV, "directory has lowerdir parts", path)
        a = core.copy_up(old)
        b = core.copy_up(new)
        for entry, parent in ((a, _split(new)[0]), (b, _split(old)[0])):
            if entry.is_dir and core.require(parent).merged and not core._is_opaque(entry.real):
                os.setxattr(entry.real, core.opaque_name, b"y", follow_symlinks=False)
        renameat2(a.real, b.real, RENAME_EXCHANGE)
        core.invalidate(old, subtree=True)
        core.invalidate(new, subtree=True)
        tmp = "\0swap"
        self._move(old, tmp, a.is_dir)
        self._move(new, old, b.is_dir)
        self._move(tmp, new, a.is_dir)

    # -- files --------------------------------------------------------------------------------

    def _open_handle(self, path: str, flags: int) -> Any:
        entry = self.core.require(path)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        node = self._node_for(path)
        if writing and entry.layer != 0:
            entry = self.core.copy_up(path)
            node.copied_up = True
        open_flags = flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY)
        fd = _open_real(entry.real, open_flags, entry.layer != 0)
        fh = next(self._next_fh)
        self.handles[fh] = Handle(fd, node, entry.layer != 0, open_flags)
        node.handles.add(fh)
        return pyfuse3.FileInfo(fh=fh, keep_cache=entry.layer != 0)

    @_fuse_errors
    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        return self._open_handle(self._path(inode), flags)

    @_fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        path = self._child(parent_inode, name)
        if self.core.resolve(path) is not None:
            raise OSError(errno.EEXIST, "exists", path)

        def make(real: str) -> None:
            os.close(os.open(real, os.O_CREAT | os.O_EXCL | os.O_WRONLY, stat.S_IMODE(mode)))

        self.core.place(path, make)
        self._owner(path, self.core.upper_path(path), ctx, mode)
        attrs = self._entry_reply(path)
        return self._open_handle(path, flags & ~os.O_TRUNC), attrs

    def _fd(self, fh: int) -> int:
        handle = self.handles[fh]
        if handle.lower and handle.node.copied_up and handle.node.path is not None:
            # Like the kernel since 4.19: a read-only descriptor follows a later copy-up.
            entry = self.core.require(handle.node.path)
            if entry.layer == 0:
                new_fd = os.open(entry.real, handle.flags | os.O_NOFOLLOW)
                os.close(handle.fd)
                handle.fd = new_fd
                handle.lower = False
        return handle.fd

    @_fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(self._fd(fh), size, off)

    @_fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return os.pwrite(self._fd(fh), buf, off)

    async def flush(self, fh: int) -> None:
        # Writes go straight to the upper file, so close() has nothing to report. ENOSYS
        # once tells the kernel to stop sending FLUSH at every close: one round trip less.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        if self.core.config.volatile:
            return
        if datasync:
            os.fdatasync(self._fd(fh))
        else:
            os.fsync(self._fd(fh))

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        os.close(handle.fd)
        handle.node.handles.discard(fh)
        self._maybe_drop(handle.node)

    # -- xattrs --------------------------------------------------------------------------------

    def _private(self, name: bytes) -> bool:
        return is_private_xattr(os.fsdecode(name), self.core.config.userxattr)

    @_fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if self._private(name):
            raise OSError(errno.ENODATA, "no such attribute")
        entry = self.core.require(self._path(inode))
        return os.getxattr(entry.real, name, follow_symlinks=False)

    @_fuse_errors
    async def listxattr(self, inode: int, ctx: Any) -> List[bytes]:
        entry = self.core.require(self._path(inode))
        names = os.listxattr(entry.real, follow_symlinks=False)
        userxattr = self.core.config.userxattr
        return [os.fsencode(n) for n in names if not is_private_xattr(n, userxattr)]

    @_fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        if self._private(name):
            raise OSError(errno.EPERM, "overlay-private attribute")
        path = self._path(inode)
        entry = self.core.copy_up(path)
        self.nodes[inode].copied_up = True
        os.setxattr(entry.real, name, value, follow_symlinks=False)

    @_fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        if self._private(name):
            raise OSError(errno.ENODATA, "no such attribute")
        path = self._path(inode)
        entry = self.core.require(path)
        if entry.layer != 0:
            os.getxattr(entry.real, name, follow_symlinks=False)  # ENODATA without copy-up
            entry = self.core.copy_up(path)
            self.nodes[inode].copied_up = True
        os.removexattr(entry.real, name, follow_symlinks=False)
