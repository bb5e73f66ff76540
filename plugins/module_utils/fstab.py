# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""fstab as text: parse, change one entry, render, and write the file atomically.

Comments, blank lines and every line that is not the entry being changed come back
byte for byte.  Fields use fstab(5)'s octal escapes (``\\040`` for a space, ``\\134``
for a backslash); :func:`mangle` writes them and :func:`unmangle` reads them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ansible_collections.lapis.layers.plugins.module_utils.mountinfo import unescape_octal

_MANGLED = {" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"}


def mangle(field: str) -> str:
    """Escape one fstab field (space, tab, newline, backslash) in octal."""
    return "".join(_MANGLED.get(char, char) for char in field)


def unmangle(field: str) -> str:
    """Undo :func:`mangle` (any ``\\ooo`` escape)."""
    return unescape_octal(field)


@dataclass(frozen=True)
class FstabEntry:
    """One mount entry, with its fields unescaped."""

    source: str
    mount_point: str
    fstype: str
    options: str
    dump: str = "0"
    passno: str = "0"

    def render(self) -> str:
        """The entry as one fstab line, without the newline."""
        fields = (self.source, self.mount_point, self.fstype, self.options)
        return " ".join((*map(mangle, fields), self.dump, self.passno))


@dataclass(frozen=True)
class FstabLine:
    """A line of the file as it was read, and the entry on it, if it holds one."""

    text: str
    entry: FstabEntry | None = None


def parse_entry(text: str) -> FstabEntry | None:
    """The entry on one line, or ``None`` for a blank, comment or malformed line."""
    fields = text.split()
    if not fields or fields[0].startswith("#") or len(fields) < 3:
        return None
    source, mount_point, fstype = (unmangle(field) for field in fields[:3])
    options = unmangle(fields[3]) if len(fields) > 3 else "defaults"
    dump = fields[4] if len(fields) > 4 else "0"
    passno = fields[5] if len(fields) > 5 else "0"
    return FstabEntry(source, mount_point, fstype, options, dump, passno)


def parse_fstab(text: str) -> list[FstabLine]:
    """Every line of the file, in order; line ends are kept in ``text``."""
    return [FstabLine(line, parse_entry(line)) for line in text.splitlines(keepends=True)]


def render_fstab(lines: list[FstabLine]) -> str:
    """The file text; a missing newline before an appended entry is added."""
    out: list[str] = []
    for line in lines:
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        out.append(line.text)
    return "".join(out)


def find_entry(lines: list[FstabLine], mount_point: str) -> FstabEntry | None:
    """The entry for ``mount_point`` (the last one wins, as in mount(8))."""
    found = [line.entry for line in lines if line.entry and line.entry.mount_point == mount_point]
    return found[-1] if found else None


def set_entry(
    lines: list[FstabLine], mount_point: str, entry: FstabEntry | None
) -> list[FstabLine]:
    """Put ``entry`` in place of the first entry for ``mount_point``; drop other ones.

    Without an existing entry the new one is appended.  ``entry=None`` removes them all.
    """
    out: list[FstabLine] = []
    placed = entry is None
    for line in lines:
        if line.entry is None or line.entry.mount_point != mount_point:
            out.append(line)
        elif not placed and entry is not None:
            ending = "\n" if line.text.endswith("\n") else ""
            out.append(FstabLine(entry.render() + ending, entry))
            placed = True
    if not placed and entry is not None:
        out.append(FstabLine(entry.render() + "\n", entry))
    return out


def read_text(path: str) -> str | None:
    """The file's text, or ``None`` when it does not exist."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


@contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold an exclusive lock on the directory of ``path`` for a read-modify-write.

    The file itself is replaced by rename, so a lock on it would not keep a second run
    out; the directory stays the same inode.
    """
    fd = os.open(Path(path).absolute().parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def backup_file(path: str) -> str:
    """Copy ``path`` beside itself with a time stamp (``fstab.20260101T120000.1234~``)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime())
    dest = f"{path}.{stamp}.{os.getpid()}~"
    shutil.copy2(path, dest)
    return dest


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` by ``text``: temp file in the same directory, fsync, rename, fsync dir.

    An existing file keeps its mode and owner.
    """
    target = Path(path).absolute()
    try:
        stat = target.stat()
        mode, owner = stat.st_mode & 0o7777, (stat.st_uid, stat.st_gid)
    except FileNotFoundError:
        owner = None
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    temp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        temp.chmod(mode)
        if owner is not None:
            os.chown(temp, *owner)
        temp.rename(target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def restore(path: str, text: str | None) -> None:
    """Put back the text read before a change (``None``: the file did not exist)."""
    if text is None:
        Path(path).unlink(missing_ok=True)
    else:
        write_atomic(path, text)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot fsync a directory
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
