# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""A build step's layer: an overlay-format directory turned into an OCI layer blob.

A build step (``RUN``, ``COPY``, ``ADD``, a ``WORKDIR`` that creates its directory)
leaves its changes in the upper directory of a kernel overlay mount. That directory
is already in the store's layer format (deleted paths are 0/0 character devices,
replaced directories carry ``trusted.overlay.opaque=y``), so it becomes the layer
directory as it is, and ``write_layer_blob`` serialises it into an OCI layer tar:

- a whiteout device ``NAME`` becomes an empty regular file ``.wh.NAME``;
- an opaque directory gets a ``.wh..wh..opq`` entry first among its children;
- other ``trusted.overlay.*`` attributes (origin, impure) are overlay bookkeeping
  and are dropped; other extended attributes go into PAX ``SCHILY.xattr.*`` records;
- files with several links in the layer become tar hard links to the first one;
- entries are written depth first in byte order of their names, owners as numbers
  without names, and with ``source_date_epoch`` every mtime is clamped to it, so
  the same tree always gives the same bytes.

The tar stream is hashed (the diff_id), compressed (gzip with a fixed header, zstd,
or none) and hashed again (the blob digest) in one pass, into a file in the store's
``tmp/`` that is renamed into ``blobs/``. ``install_layer_dir`` renames the directory
into ``<store>/layers/<chain id>/diff`` with its ``layer.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import (
    OCI_LAYER_FOR,
    canonical_json,
    chain_ids,
    digest_hex,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import (
    Store,
    remove_tree,
    write_atomic,
)

try:
    import zstandard

    HAS_ZSTANDARD = True
except ImportError:  # pragma: no cover - the requirements install it
    HAS_ZSTANDARD = False

COMPRESSIONS = ("gzip", "zstd", "none")
OPAQUE_XATTR = "trusted.overlay.opaque"
OVERLAY_XATTR_PREFIX = "trusted.overlay."
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
GZIP_LEVEL = 1
ZSTD_LEVEL = 3
_CHUNK = 1 << 20


class LayerBuildError(Exception):
    """A layer cannot be serialised or stored; the message names the path."""


@dataclass(frozen=True)
class BuiltLayer:
    """A layer blob in the store: blob digest, diff_id, media type, blob size, tar size."""

    digest: str
    diff_id: str
    media_type: str
    size: int
    tar_size: int
    entries: int

    def to_dict(self) -> dict[str, Any]:
        """For cache records and module results."""
        return {
            "digest": self.digest,
            "diff_id": self.diff_id,
            "media_type": self.media_type,
            "size": self.size,
            "tar_size": self.tar_size,
            "entries": self.entries,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> BuiltLayer:
        """Read back what ``to_dict`` wrote."""
        return cls(
            digest=str(doc["digest"]),
            diff_id=str(doc["diff_id"]),
            media_type=str(doc["media_type"]),
            size=int(doc["size"]),
            tar_size=int(doc.get("tar_size", 0)),
            entries=int(doc.get("entries", 0)),
        )


# --- the compressing, hashing sink -----------------------------------------------------------


class _BlobSink:
    """A write-only file: tar bytes in, hashed, compressed, hashed again, written to ``out``."""

    def __init__(self, out: IO[bytes], compression: str) -> None:
        if compression not in COMPRESSIONS:
            raise LayerBuildError(
                f"unknown layer compression {compression!r}; expected one of "
                + ", ".join(COMPRESSIONS)
            )
        if compression == "zstd" and not HAS_ZSTANDARD:
            raise LayerBuildError("zstd layers need the Python package zstandard")
        self.out = out
        self.compression = compression
        self.diff_hash = hashlib.sha256()
        self.blob_hash = hashlib.sha256()
        self.tar_size = 0
        self.size = 0
        self._gzip = (
            zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31) if compression == "gzip" else None
        )
        self._zstd = (
            zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
            if compression == "zstd"
            else None
        )

    def _emit(self, data: bytes) -> None:
        if data:
            self.blob_hash.update(data)
            self.size += len(data)
            self.out.write(data)

    def write(self, data: bytes) -> int:
        view = bytes(data)
        self.diff_hash.update(view)
        self.tar_size += len(view)
        if self._gzip is not None:
            self._emit(self._gzip.compress(view))
        elif self._zstd is not None:
            self._emit(self._zstd.compress(view))
        else:
            self._emit(view)
        return len(view)

    def finish(self) -> None:
        if self._gzip is not None:
            self._emit(self._gzip.flush())
        elif self._zstd is not None:
            self._emit(self._zstd.flush())


# --- walking an overlay-format directory -------------------------------------------------------


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out: dict[str, bytes] = {}
    for name in names:
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


class _LayerTar:
    """Writes one overlay-format tree as OCI layer tar entries."""

    def __init__(self, root: str, sink: _BlobSink, epoch: int | None) -> None:
        self.root = root
        self.tar = tarfile.open(  # noqa: SIM115 -- closed in run()
            fileobj=cast(IO[bytes], sink),
            mode="w|",
            format=tarfile.PAX_FORMAT,
            encoding="utf-8",
        )
        self.epoch = epoch
        self.links: dict[tuple[int, int], str] = {}
        self.entries = 0

    def run(self) -> int:
        try:
            self._walk("")
        finally:
            self.tar.close()
        return self.entries

    def _mtime(self, value: float) -> int:
        seconds = int(value)
        if self.epoch is not None and seconds > self.epoch:
            return self.epoch
        return max(seconds, 0)

    def _info(self, name: str, info: os.stat_result) -> tarfile.TarInfo:
        entry = tarfile.TarInfo(name)
        entry.mode = stat.S_IMODE(info.st_mode)
        entry.uid = info.st_uid
        entry.gid = info.st_gid
        entry.uname = ""
        entry.gname = ""
        entry.mtime = self._mtime(info.st_mtime)
        return entry

    def _add(self, entry: tarfile.TarInfo, data: IO[bytes] | None = None) -> None:
        self.tar.addfile(entry, data)
        self.entries += 1

    def _walk(self, rel: str) -> None:
        path = f"{self.root}/{rel}" if rel else self.root
        try:
            names = sorted((p.name for p in Path(path).iterdir()), key=os.fsencode)
        except OSError as exc:
            raise LayerBuildError(f"cannot read layer directory {path}: {exc.strerror}") from exc
        if rel and _xattrs(path).get(OPAQUE_XATTR) == b"y":
            marker = tarfile.TarInfo(f"{rel}/{OPAQUE_MARKER}")
            marker.mtime = self._mtime(os.lstat(path).st_mtime)
            self._add(marker)
        for name in names:
            self._entry(f"{rel}/{name}" if rel else name, name)

    def _entry(self, rel: str, name: str) -> None:
        path = f"{self.root}/{rel}"
        info = os.lstat(path)
        kind = stat.S_IFMT(info.st_mode)
        if kind == stat.S_IFCHR and info.st_rdev == 0:
            parent, _sep, _base = rel.rpartition("/")
            whiteout = tarfile.TarInfo(
                f"{parent}/{WHITEOUT_PREFIX}{name}" if parent else WHITEOUT_PREFIX + name
            )
            whiteout.mtime = self._mtime(info.st_mtime)
            self._add(whiteout)
            return
        entry = self._info(rel, info)
        xattrs = {
            key: value
            for key, value in _xattrs(path).items()
            if not key.startswith(OVERLAY_XATTR_PREFIX)
        }
        pax: dict[str, str] = {}
        for key, value in sorted(xattrs.items()):
            pax["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
        entry.pax_headers = pax
        if kind == stat.S_IFDIR:
            entry.type = tarfile.DIRTYPE
            self._add(entry)
            self._walk(rel)
        elif kind == stat.S_IFREG:
            self._file(entry, info, path)
        elif kind == stat.S_IFLNK:
            entry.type = tarfile.SYMTYPE
            entry.linkname = str(Path(path).readlink())
            self._add(entry)
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            entry.type = tarfile.CHRTYPE if kind == stat.S_IFCHR else tarfile.BLKTYPE
            entry.devmajor = os.major(info.st_rdev)
            entry.devminor = os.minor(info.st_rdev)
            self._add(entry)
        elif kind == stat.S_IFIFO:
            entry.type = tarfile.FIFOTYPE
            self._add(entry)
        # sockets are not representable in a tar: skipped, as Docker does

    def _file(self, entry: tarfile.TarInfo, info: os.stat_result, path: str) -> None:
        key = (info.st_dev, info.st_ino)
        if info.st_nlink > 1:
            first = self.links.get(key)
            if first is not None:
                entry.type = tarfile.LNKTYPE
                entry.linkname = first
                self._add(entry)
                return
            self.links[key] = entry.name
        entry.type = tarfile.REGTYPE
        entry.size = info.st_size
        with open(path, "rb") as handle:
            self._add(entry, handle)


def write_layer_blob(
    store: Store, diff_dir: str, compression: str = "gzip", epoch: int | None = None
) -> BuiltLayer:
    """Serialise ``diff_dir`` (overlay format) into a layer blob in ``store``."""
    store.init()
    fd, tmp = tempfile.mkstemp(prefix="build-blob-", dir=store.tmp_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            sink = _BlobSink(out, compression)
            entries = _LayerTar(diff_dir, sink, epoch).run()
            sink.finish()
        digest = "sha256:" + sink.blob_hash.hexdigest()
        _move_blob(store, Path(tmp), digest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return BuiltLayer(
        digest=digest,
        diff_id="sha256:" + sink.diff_hash.hexdigest(),
        media_type=OCI_LAYER_FOR[compression],
        size=sink.size,
        tar_size=sink.tar_size,
        entries=entries,
    )


def _move_blob(store: Store, tmp: Path, digest: str) -> None:
    target = store.blob_path(digest)
    with store.lock(shared=True), store.lock(f"blob-{digest_hex(digest)}"):
        if target.is_file():
            return
        tmp.chmod(0o644)
        tmp.rename(target)


def clean_overlay_xattrs(root: str) -> None:
    """Drop overlay bookkeeping attributes (origin, impure, ...) except ``opaque``."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""]:
            path = f"{dirpath}/{name}" if name else dirpath
            try:
                keys = os.listxattr(path, follow_symlinks=False)
            except OSError:
                continue
            for key in keys:
                if key.startswith(OVERLAY_XATTR_PREFIX) and key != OPAQUE_XATTR:
                    try:
                        os.removexattr(path, key, follow_symlinks=False)
                    except OSError:
                        continue


def install_layer_dir(store: Store, chain_id: str, layer: BuiltLayer, diff_dir: str) -> None:
    """Make ``diff_dir`` the store's layer directory for ``chain_id`` (unless one exists)."""
    hexid = digest_hex(chain_id)
    with store.lock(shared=True), store.lock(f"layer-{hexid}"):
        if store.has_layer(chain_id):
            meta = store.layer_metadata(chain_id)
            if layer.digest not in meta.get("blobs", []):
                meta["blobs"] = sorted({*meta.get("blobs", []), layer.digest})
                write_atomic(store.layer_path(chain_id) / "layer.json", canonical_json(meta))
            remove_tree(Path(diff_dir))
            return
        work = Path(tempfile.mkdtemp(prefix=f"layer-{hexid[:12]}-", dir=store.tmp_dir))
        try:
            Path(diff_dir).rename(work / "diff")
            meta = {
                "chain_id": chain_id,
                "diff_id": layer.diff_id,
                "size": layer.tar_size,
                "entries": layer.entries,
                "blobs": [layer.digest],
            }
            write_atomic(work / "layer.json", canonical_json(meta))
            if store.layer_path(chain_id).exists():
                remove_tree(store.layer_path(chain_id))
            work.rename(store.layer_path(chain_id))
        except BaseException:
            remove_tree(work)
            raise


def next_chain_id(parent_diff_ids: list[str], diff_id: str) -> str:
    """Chain id of a layer with ``diff_id`` on top of ``parent_diff_ids``."""
    return chain_ids([*parent_diff_ids, diff_id])[-1]


def json_bytes(doc: Any) -> bytes:
    """Canonical JSON for configs and manifests (sorted keys, no spaces)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")
