# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Directory lookups confined to a root, by file descriptor.

Every parent directory of a member is opened component by component with
``O_NOFOLLOW | O_DIRECTORY`` relative to its own parent's descriptor, starting at
the root's descriptor. A component that is a symlink is resolved with the root as
anchor (an absolute target starts again at the root, ``..`` stops at the root),
like a ``chroot``: no write can leave the root, whatever the symlinks say. More
than 40 symlinks in one lookup is a symlink loop and refused.

Opened directories are cached by path (as spelled and as resolved), so each parent
is checked once per layer. The cache is dropped whenever a directory or symlink is
removed or replaced, because a cached path could then lead elsewhere.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from dataclasses import dataclass

from ansible_collections.lapis.layers.plugins.module_utils.layer_policy import LayerError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_SYMLINK_HOPS = 40
_CACHE_LIMIT = 400


@dataclass(frozen=True)
class Dir:
    """An open directory inside the root: its descriptor and its resolved path."""

    fd: int
    real: str


class ConfinedTree:
    """Lookups of directories inside ``root`` that never leave it."""

    def __init__(self, root: str) -> None:
        try:
            fd = os.open(root, DIR_FLAGS)
        except OSError as exc:
            raise LayerError(None, f"destination {root} is not a directory: {exc}") from exc
        self.root = Dir(fd, "")
        self._cache: dict[str, Dir] = {}
        self._stale = False

    def close(self) -> None:
        self._drop()
        os.close(self.root.fd)

    def forget(self) -> None:
        """Mark the cache stale (a directory or symlink went away); dropped at the next lookup."""
        self._stale = True

    def _drop(self) -> None:
        for fd in {entry.fd for entry in self._cache.values()} - {self.root.fd}:
            os.close(fd)
        self._cache.clear()
        self._stale = False

    def begin(self) -> None:
        """Start one member: the only point at which cached descriptors are closed."""
        if self._stale or len(self._cache) > _CACHE_LIMIT:
            self._drop()

    def parent(self, path: str, member: str, create: bool = True) -> Dir | None:
        """The directory that holds ``path`` (created as needed), ``None`` if absent."""
        return self.directory(posixpath.dirname(path), member, create)

    def directory(self, rel: str, member: str, create: bool = True) -> Dir | None:
        """The directory ``rel`` resolved inside the root; ``None`` when absent and not created."""
        if not rel:
            return self.root
        hit = self._cache.get(rel)
        if hit is not None:
            return hit
        head, name = posixpath.split(rel)
        parent = self.directory(head, member, create)
        if parent is None:
            return None
        found = self._step(parent, name, member, create, [0])
        if found is not None:
            self._cache[rel] = found
        return found

    def _step(
        self, parent: Dir, name: str, member: str, create: bool, hops: list[int]
    ) -> Dir | None:
        real = posixpath.join(parent.real, name)
        hit = self._cache.get(real)
        if hit is not None:
            return hit
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent.fd)
        except FileNotFoundError:
            if not create:
                return None
            os.mkdir(name, 0o755, dir_fd=parent.fd)
            fd = os.open(name, DIR_FLAGS, dir_fd=parent.fd)
            os.fchmod(fd, 0o755)  # an implicit parent: 0755 whatever the umask
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            return self._follow(parent, name, member, create, hops)
        found = Dir(fd, real)
        self._cache[real] = found
        return found

    def _follow(
        self, parent: Dir, name: str, member: str, create: bool, hops: list[int]
    ) -> Dir | None:
        where = posixpath.join(parent.real, name)
        if not stat.S_ISLNK(os.lstat(name, dir_fd=parent.fd).st_mode):
            raise LayerError(member, f"parent {where!r} is not a directory")
        hops[0] += 1
        if hops[0] > MAX_SYMLINK_HOPS:
            raise LayerError(member, f"symlink loop at {where!r} (too many levels of symlinks)")
        target = os.readlink(name, dir_fd=parent.fd)
        current: Dir | None = self.root if target.startswith("/") else parent
        for part in target.split("/"):
            if current is None:
                return None
            if part in ("", "."):
                continue
            if part == "..":
                current = self._up(current, member)
            else:
                current = self._step(current, part, member, create, hops)
        return current

    def _up(self, current: Dir, member: str) -> Dir | None:
        if not current.real:
            return self.root
        return self.directory(posixpath.dirname(current.real), member, create=False)
