# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Layer extraction: one image layer blob into a directory, safely and in one pass.

Public API (what the image store calls):

``extract_layer(path, dest, *, mode="overlay", compression=None) -> LayerResult``
    ``mode="overlay"``: write the layer into an empty (or missing) directory in
    overlay format: an OCI whiteout ``.wh.NAME`` becomes a 0/0 character device
    ``NAME``, an opaque marker ``.wh..wh..opq`` becomes the xattr
    ``trusted.overlay.opaque=y`` on its directory. ``mode="flat"``: apply the layer
    onto an existing root filesystem: a whiteout deletes the lower entry, an opaque
    marker empties the directory of lower entries, the rest is written. Entries of
    the same layer are never deleted by its own whiteouts.
``LayerResult``
    ``diff_id`` (``sha256:<hex>`` of the uncompressed tar stream, hashed while
    extracting), ``compressed_digest`` (``sha256:<hex>`` of the blob as stored),
    ``size`` (uncompressed bytes), ``entries`` (tar members), ``compression``,
    ``warnings`` (degradations, each said once).
``flatten_layers(layer_dirs, dest) -> None``
    A flat root filesystem from overlay-format layer directories given bottom-first.
``flatten_blobs(paths, dest) -> list[LayerResult]``
    A flat root filesystem from layer blobs given bottom-first.
``detect_compression(path) -> str`` and ``open_layer_stream(path, compression=None)``
    From :mod:`layer_stream`: ``gzip``/``zstd``/``none`` by magic bytes, and a reader
    of the uncompressed stream.
``LayerError``
    ``member`` (or ``None``) and ``reason``; ``str()`` reads
    ``layer member 'etc/../../x': path escapes the root``.

Everything is preserved as root: numeric owners, modes with setuid/setgid/sticky,
mtimes (directories' after their contents), ``SCHILY.xattr.*`` xattrs, hardlinks,
device nodes, fifos, symlinks (never followed). See :mod:`layer_policy` for what is
refused and :mod:`layer_tree` for how writes are kept inside the root.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Mapping, cast

from ansible_collections.lapis.layers.plugins.module_utils.layer_policy import (
    OVERLAY_XATTR_PREFIX,
    Entry,
    LayerError,
    to_entry,
)
from ansible_collections.lapis.layers.plugins.module_utils.layer_stream import (
    DigestingReader,
    detect_compression,
    open_layer_stream,
)
from ansible_collections.lapis.layers.plugins.module_utils.layer_writer import (
    FLAT,
    MODES,
    OVERLAY,
    LayerWriter,
    flatten_layers,
)

__all__ = [
    "FLAT",
    "OVERLAY",
    "LayerError",
    "LayerResult",
    "detect_compression",
    "extract_layer",
    "flatten_blobs",
    "flatten_layers",
    "open_layer_stream",
]

_TAR_BUFSIZE = 16 * 1024
_COPY_CHUNK = 1 << 20
_BLOCK = 512


@dataclass
class LayerResult:
    """What extracting one layer blob found."""

    diff_id: str
    compressed_digest: str
    size: int
    entries: int
    compression: str = "none"
    warnings: list[str] = field(default_factory=list)


def extract_layer(
    path: str, dest: str, *, mode: str = OVERLAY, compression: str | None = None
) -> LayerResult:
    """Extract the layer blob ``path`` into ``dest`` (see the module docstring for modes)."""
    if mode not in MODES:
        raise LayerError(None, f"unknown extraction mode {mode!r} (use overlay or flat)")
    _prepare_dest(dest, mode)
    reader = DigestingReader(path, compression)
    try:
        writer = LayerWriter(dest, mode)
        try:
            entries, end = _read_members(reader, writer)
            writer.finish()
        finally:
            writer.close()
    finally:
        reader.close()
    if reader.size < end + _BLOCK:
        raise LayerError(None, "tar stream ends without an end-of-archive block (truncated blob)")
    return LayerResult(
        diff_id=reader.diff_id,
        compressed_digest=reader.compressed_digest,
        size=reader.size,
        entries=entries,
        compression=reader.compression,
        warnings=writer.warnings,
    )


def _prepare_dest(dest: str, mode: str) -> None:
    if mode == OVERLAY:
        try:
            Path(dest).mkdir(mode=0o755)
        except FileExistsError:
            if any(Path(dest).iterdir()):
                raise LayerError(None, f"overlay destination {dest} is not empty") from None
    elif not Path(dest).is_dir():
        raise LayerError(None, f"flat destination {dest} is not a directory")


def _read_members(reader: DigestingReader, writer: LayerWriter) -> tuple[int, int]:
    """Apply the tar, then read the stream to its end (the decompressor's verdict)."""
    try:
        entries, end = _apply_tar(reader, writer)
    except LayerError as exc:
        if exc.member is None:
            reader.finish()  # a failed decompressor explains a broken tar stream best
        raise
    reader.finish()
    return entries, end


def _apply_tar(reader: DigestingReader, writer: LayerWriter) -> tuple[int, int]:
    """Write every member; return the member count and where the last member ended."""
    entries = 0
    try:
        with tarfile.open(fileobj=reader, mode="r|", bufsize=_TAR_BUFSIZE) as tar:
            stream = cast(IO[bytes], tar.fileobj)
            member = tar.next()
            while member is not None:
                entry = to_entry(member)
                if member.pax_headers:
                    _note_dropped_xattrs(member.pax_headers, writer)
                writer.apply(entry, _tar_copier(stream, member, entry))
                entries += 1
                member = tar.next()
            return entries, tar.offset
    except tarfile.TarError as exc:
        raise LayerError(None, f"not a valid tar stream: {exc}") from exc
    except EOFError as exc:
        raise LayerError(None, f"tar stream is truncated: {exc}") from exc


def _note_dropped_xattrs(pax: Mapping[str, str], writer: LayerWriter) -> None:
    if any(key.startswith("SCHILY.xattr." + OVERLAY_XATTR_PREFIX) for key in pax):
        writer.warn_once(
            "overlay", "trusted.overlay.* xattrs in the layer tar were dropped (not trusted)"
        )


def _tar_copier(
    stream: IO[bytes], member: tarfile.TarInfo, entry: Entry
) -> Callable[[int], None] | None:
    if not member.isreg():
        return None
    sparse = cast("list[tuple[int, int]] | None", member.sparse)

    def copy(fd: int) -> None:
        if sparse is None:
            _copy_bytes(stream, fd, member.size, entry.name)
            return
        for offset, size in sparse:
            os.lseek(fd, offset, os.SEEK_SET)
            _copy_bytes(stream, fd, size, entry.name)
        os.ftruncate(fd, member.size)

    return copy


def _copy_bytes(stream: IO[bytes], fd: int, size: int, name: str) -> None:
    read = stream.read
    while size > 0:
        data = read(min(size, _COPY_CHUNK))
        if not data:
            raise LayerError(name, "file data ends early (truncated blob)")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        size -= len(data)


def flatten_blobs(paths: list[str], dest: str) -> list[LayerResult]:
    """A flat root filesystem in ``dest`` from layer blobs given bottom-first."""
    Path(dest).mkdir(mode=0o755, exist_ok=True)
    return [extract_layer(path, dest, mode=FLAT) for path in paths]
