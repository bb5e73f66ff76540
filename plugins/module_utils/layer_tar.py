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
refused, :mod:`layer_tree` for how writes are kept inside the root and
:mod:`layer_tarstream` for the tar formats read.

Known limits:

- A failed extraction leaves ``dest`` partly written: extract into a temporary
  directory and rename it when complete (the image store does). There is no
  locking here; one extraction per destination at a time.
- It needs root (ownership, device nodes, ``trusted.*`` xattrs); there is no
  rootless mode. xattrs the destination refuses are skipped with one warning per
  namespace.
- In overlay format a layer stands alone: a hardlink must point into the same
  layer (real layer tars always do), and a member below a directory that is a
  symlink in a lower layer (``lib/x`` over ``lib -> usr/lib``) lands in a real
  ``lib/`` directory of that layer, as in containerd; flat mode follows the symlink
  inside the root. Parent directories that the tar does not list are created
  0755 root:root.
- PAX sparse format 0.0 and ``LIBARCHIVE.xattr.*`` records are not read.
"""

from __future__ import annotations

import functools
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, cast

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
from ansible_collections.lapis.layers.plugins.module_utils.layer_tarstream import TarStream
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
            entries = _read_members(reader, writer)
            writer.finish()
        finally:
            writer.close()
    finally:
        reader.close()
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


def _read_members(reader: DigestingReader, writer: LayerWriter) -> int:
    """Apply the tar, then read the stream to its end (the decompressor's verdict)."""
    try:
        entries = _apply_tar(reader, writer)
    except LayerError as exc:
        if exc.member is None:
            reader.finish()  # a failed decompressor explains a broken tar stream best
        raise
    reader.finish()
    return entries


def _apply_tar(reader: DigestingReader, writer: LayerWriter) -> int:
    """Write every member; return how many there were."""
    stream = TarStream(reader.read)
    entries = 0
    member = stream.next()
    while member is not None:
        entry = to_entry(member)
        if member.pax_headers:
            _note_dropped_xattrs(member.pax_headers, writer)
        writer.apply(entry, _copier(stream, member, entry) if member.isreg() else None)
        entries += 1
        member = stream.next()
    return entries


def _note_dropped_xattrs(pax: Mapping[str, str], writer: LayerWriter) -> None:
    if any(key.startswith("SCHILY.xattr." + OVERLAY_XATTR_PREFIX) for key in pax):
        writer.warn_once(
            "overlay", "trusted.overlay.* xattrs in the layer tar were dropped (not trusted)"
        )


def _copier(stream: TarStream, member: tarfile.TarInfo, entry: Entry) -> Callable[[int], None]:
    sparse = cast("list[tuple[int, int]] | None", member.sparse)
    if sparse is None:
        return functools.partial(_copy_plain, stream, member.size, entry.name)
    return functools.partial(_copy_sparse, stream, sparse, member.size, entry.name)


def _copy_plain(stream: TarStream, size: int, name: str, fd: int) -> None:
    stream.copy(fd, size, name)


def _copy_sparse(
    stream: TarStream, chunks: list[tuple[int, int]], size: int, name: str, fd: int
) -> None:
    for offset, length in chunks:
        os.lseek(fd, offset, os.SEEK_SET)
        stream.copy(fd, length, name)
    os.ftruncate(fd, size)


def flatten_blobs(paths: list[str], dest: str) -> list[LayerResult]:
    """A flat root filesystem in ``dest`` from layer blobs given bottom-first."""
    Path(dest).mkdir(mode=0o755, exist_ok=True)
    return [extract_layer(path, dest, mode=FLAT) for path in paths]
