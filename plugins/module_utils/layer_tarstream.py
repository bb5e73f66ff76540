# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""A lean streaming tar reader for layer blobs: headers in, :class:`tarfile.TarInfo` out.

``tarfile``'s stream mode spends most of an extraction's CPU time on header objects
and buffer copies; this reader parses the same formats with less work per member and
hands file data straight from its buffer to ``os.write``:

- ustar, GNU and v7 headers (octal and base-256 numbers, checksum checked);
- GNU long names and link names (``L``/``K``), PAX extended and global headers
  (``x``/``g``: path, linkpath, size, uid, gid, mtime and any other record, kept in
  ``pax_headers`` so ``SCHILY.xattr.*`` reach the policy);
- sparse files: GNU old format (``S``) and PAX 0.1 and 1.0; ``info.sparse`` lists the
  data chunks and ``info.size`` is the real file size.

The stream ends at the first zero block. A stream that ends without one, inside a
header or inside file data is truncated and refused with :class:`LayerError`.
"""

from __future__ import annotations

import os
import tarfile
from typing import Callable

from ansible_collections.lapis.layers.plugins.module_utils.layer_policy import LayerError

BLOCK = 512
_CHUNK = 1 << 20
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE)
_NO_DATA = (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE)
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"


def _text(field: bytes) -> str:
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode(_ENCODING, _ERRORS)


def _number(field: bytes, what: str) -> int:
    """An octal or base-256 header number."""
    if field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (256 ** (len(field) - 1)) if field[0] == 0xFF else value
    digits = field.partition(b"\0")[0]
    try:
        return int(digits, 8)  # int() itself skips surrounding spaces
    except ValueError:
        if not digits.strip():
            return 0
        raise LayerError(None, f"invalid tar header: {what} field {field!r}") from None


class TarStream:
    """Members of the tar stream that ``read(n)`` returns, one at a time."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._buf = b""
        self._pos = 0
        self._left = 0  # unread data and padding of the current member
        self._globals: dict[str, str] = {}
        self.offset = 0  # stream position of the next header

    # -- buffered input -----------------------------------------------------------------

    def _fill(self, size: int) -> None:
        """Make ``size`` bytes available at ``_pos`` (fewer only at the end of the stream)."""
        if self._pos == len(self._buf):
            data = self._read(max(_CHUNK, size))
            self._buf, self._pos = data, 0
            if len(data) >= size or not data:
                return
        parts = [self._buf[self._pos :]]
        have = len(parts[0])
        while have < size:
            data = self._read(max(_CHUNK, size - have))
            if not data:
                break
            parts.append(data)
            have += len(data)
        self._buf = b"".join(parts)
        self._pos = 0

    def _take(self, size: int, what: str) -> bytes:
        if len(self._buf) - self._pos < size:
            self._fill(size)
            if len(self._buf) < size:
                raise LayerError(None, f"tar stream is truncated inside {what}")
        data = self._buf[self._pos : self._pos + size]
        self._pos += size
        self.offset += size
        return data

    def _skip(self, size: int) -> None:
        while size > 0:
            avail = len(self._buf) - self._pos
            if avail == 0:
                self._fill(min(size, _CHUNK))
                avail = len(self._buf)
                if avail == 0:
                    raise LayerError(None, "tar stream is truncated inside file data")
            step = min(avail, size)
            self._pos += step
            self.offset += step
            size -= step

    def copy(self, fd: int, size: int, name: str) -> None:
        """Write the next ``size`` data bytes of the current member to ``fd``."""
        if size > self._left:
            raise LayerError(name, "file data is larger than the member")
        self._left -= size
        while size > 0:
            avail = len(self._buf) - self._pos
            if avail == 0:
                self._buf, self._pos = self._read(min(max(size, BLOCK), _CHUNK)), 0
                avail = len(self._buf)
                if avail == 0:
                    raise LayerError(name, "file data ends early (truncated blob)")
            step = min(avail, size)
            view = memoryview(self._buf)[self._pos : self._pos + step]
            while view:
                view = view[os.write(fd, view) :]
            self._pos += step
            self.offset += step
            size -= step

    # -- headers ------------------------------------------------------------------------

    def next(self) -> tarfile.TarInfo | None:
        """The next member, or ``None`` at the end-of-archive block."""
        self._skip(self._left)
        self._left = 0
        pax: dict[str, str] = {}
        long_name = long_link = None
        while True:
            start = self.offset
            if len(self._buf) - self._pos < BLOCK:
                self._fill(BLOCK)
                if len(self._buf) == 0:
                    if start == 0:
                        raise LayerError(None, "not a valid tar stream: empty file")
                    raise LayerError(
                        None, "tar stream ends without an end-of-archive block (truncated blob)"
                    )
            block = self._take(BLOCK, "a header")
            if block == _ZERO_BLOCK:
                return None
            self._check(block, start)
            kind = block[156:157]
            size = _number(block[124:136], "size")
            if kind in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
                text = _text(self._take(_padded(size), "a long name")[:size])
                if kind == tarfile.GNUTYPE_LONGNAME:
                    long_name = text
                else:
                    long_link = text
                continue
            if kind in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE):
                records = _pax_records(self._take(_padded(size), "a PAX header")[:size])
                (self._globals if kind == tarfile.XGLTYPE else pax).update(records)
                continue
            return self._member(block, size, pax, (long_name, long_link))

    def _check(self, block: bytes, start: int) -> None:
        try:
            stored = _number(block[148:156], "checksum")
        except LayerError:
            stored = -1
        unsigned = sum(block) - sum(block[148:156]) + 8 * 32
        if stored != unsigned:
            signed = unsigned - 256 * sum(1 for byte in block if byte > 127)
            if stored != signed:
                raise LayerError(None, f"not a valid tar stream: bad header at offset {start}")

    def _member(
        self, block: bytes, size: int, pax: dict[str, str], longs: tuple[str | None, str | None]
    ) -> tarfile.TarInfo:
        kind = block[156:157]
        long_name, long_link = longs
        name = _text(block[0:100])
        if block[257:263] == b"ustar\x00" and block[345] != 0:
            name = _text(block[345:500]) + "/" + name
        info = tarfile.TarInfo(long_name if long_name is not None else name)
        info.type = kind
        info.mode = _number(block[100:108], "mode")
        info.uid = _number(block[108:116], "uid")
        info.gid = _number(block[116:124], "gid")
        info.mtime = _number(block[136:148], "mtime")
        info.linkname = long_link if long_link is not None else _text(block[157:257])
        if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor = _number(block[329:337], "devmajor")
            info.devminor = _number(block[337:345], "devminor")
        info.size = data_size = size
        if kind == tarfile.GNUTYPE_SPARSE:
            chunks, info.size = self._gnu_sparse(block)
            _set_sparse(info, chunks)
        if self._globals or pax:
            data_size = self._apply_pax(info, {**self._globals, **pax}, size)
        if kind in _NO_DATA or kind == tarfile.DIRTYPE:
            data_size = 0  # as tarfile: only regular and unknown members carry data
        self._left = _padded(data_size)
        if info.sparse is not None and info.pax_headers.get("GNU.sparse.major") == "1":
            _set_sparse(info, self._sparse_map_v1())
        if kind not in _REGULAR and kind not in _NO_DATA and kind != tarfile.DIRTYPE:
            info.type = tarfile.REGTYPE  # unknown types are plain files, as tarfile does
        return info

    def _apply_pax(self, info: tarfile.TarInfo, pax: dict[str, str], size: int) -> int:
        """Apply PAX records; return the member's data size in the archive."""
        info.pax_headers = pax
        if "path" in pax:
            info.name = pax["path"]
        if "linkpath" in pax:
            info.linkname = pax["linkpath"]
        for key in ("uid", "gid", "size"):
            if key in pax:
                try:
                    setattr(info, key, int(pax[key]))
                except ValueError:
                    raise LayerError(info.name, f"invalid PAX {key} {pax[key]!r}") from None
        if "mtime" in pax:
            try:
                info.mtime = float(pax["mtime"])
            except ValueError:
                raise LayerError(info.name, f"invalid PAX mtime {pax['mtime']!r}") from None
        data_size = info.size if "size" in pax else size
        if "GNU.sparse.map" in pax or "GNU.sparse.major" in pax or "GNU.sparse.size" in pax:
            return self._pax_sparse(info, pax, data_size)
        if info.sparse is None:
            info.size = data_size
        return data_size

    def _pax_sparse(self, info: tarfile.TarInfo, pax: dict[str, str], data_size: int) -> int:
        info.name = pax.get("GNU.sparse.name", info.name)
        real = pax.get("GNU.sparse.realsize", pax.get("GNU.sparse.size"))
        if real is None:
            raise LayerError(info.name, "PAX sparse file without a real size")
        info.size = int(real)
        if pax.get("GNU.sparse.major") == "1":
            _set_sparse(info, [])  # the map is at the start of the data: read by _member
            return data_size
        if "GNU.sparse.map" not in pax:
            raise LayerError(info.name, "unsupported PAX sparse format 0.0; use GNU tar 1.23+")
        numbers = [int(value) for value in pax["GNU.sparse.map"].split(",") if value]
        _set_sparse(info, list(zip(numbers[::2], numbers[1::2], strict=False)))
        return data_size

    def _sparse_map_v1(self) -> list[tuple[int, int]]:
        """The PAX 1.0 sparse map: decimal lines at the start of the data, block-padded."""
        text = b""
        while True:
            text += self._take(BLOCK, "a sparse map")
            self._left -= BLOCK
            lines = text.split(b"\n")
            if len(lines) > 1:
                count = int(lines[0])
                if len(lines) - 1 >= 1 + 2 * count:
                    numbers = [int(line) for line in lines[1 : 1 + 2 * count]]
                    return list(zip(numbers[::2], numbers[1::2], strict=False))

    def _gnu_sparse(self, block: bytes) -> tuple[list[tuple[int, int]], int]:
        chunks = _sparse_entries(block[386:482], 4)
        extended = block[482]
        while extended:
            ext = self._take(BLOCK, "a sparse header")
            chunks += _sparse_entries(ext[:504], 21)
            extended = ext[504]
        return chunks, _number(block[483:495], "realsize")


def _sparse_entries(area: bytes, count: int) -> list[tuple[int, int]]:
    found = []
    for index in range(count):
        entry = area[index * 24 : index * 24 + 24]
        if not entry[0]:
            break
        found.append((_number(entry[:12], "sparse offset"), _number(entry[12:], "sparse size")))
    return found


def _set_sparse(info: tarfile.TarInfo, chunks: list[tuple[int, int]]) -> None:
    info.sparse = chunks  # type: ignore[assignment]  # typeshed has the wrong type


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def _pax_records(data: bytes) -> dict[str, str]:
    """``"LEN key=value\\n"`` records of a PAX header."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise LayerError(None, "invalid PAX header record") from None
        if space < 0 or length <= 0:
            raise LayerError(None, "invalid PAX header record")
        record = data[space + 1 : pos + length - 1]
        key, sep, value = record.partition(b"=")
        if not sep:
            raise LayerError(None, "invalid PAX header record")
        records[key.decode(_ENCODING, _ERRORS)] = value.decode(_ENCODING, _ERRORS)
        pos += length
    return records
