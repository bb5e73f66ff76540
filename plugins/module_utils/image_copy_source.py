# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The controller's side of ``lapis.layers.image_copy``: the image to send, chunk by chunk.

:func:`open_controller_image` opens an OCI layout, an OCI archive, a docker-archive or an
image of the controller's own store (``image_import`` does the reading) and gives the
manifest the host will store (Docker schema2 in its OCI form, as every import does) and
the blobs to offer. :class:`ChunkFiles` turns a chunk of a blob into a local file that the
connection's ``put_file`` can send: the blob file itself when one chunk covers a blob that
is a plain file, otherwise a temp file holding just that chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from io import FileIO
from pathlib import Path
from typing import IO

from ansible_collections.lapis.layers.plugins.module_utils.image_copy import BlobRef
from ansible_collections.lapis.layers.plugins.module_utils.image_import import (
    SOURCES,
    ImageSource,
    SourceError,
    blobs_in_store_source,
    open_source,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    Descriptor,
    docker_to_oci_manifest,
    parse_manifest,
    sha256_digest,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_refs import (
    InvalidReference,
    parse_image_ref,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store

SOURCE_KINDS = ("auto", *SOURCES, "store")
_READ = 1 << 20


def detect_kind(path: Path) -> str | None:
    """``oci``, ``oci-archive`` or ``docker-archive`` from what is at ``path``, else None."""
    if path.is_dir():
        return "oci" if (path / "oci-layout").is_file() else None
    if not path.is_file():
        return None
    try:
        with tarfile.open(path, "r:*") as tar:
            names = {name.lstrip("./") for name in tar.getnames()}
    except (tarfile.TarError, OSError, EOFError):
        return None
    if "oci-layout" in names:
        return "oci-archive"
    if "manifest.json" in names:
        return "docker-archive"
    return None


@dataclass
class ControllerImage:
    """The image to send: the manifest the host stores, its blobs, and how to read them."""

    description: str
    manifest: bytes
    media_type: str
    blobs: list[Descriptor]
    source: ImageSource
    stack: ExitStack = field(default_factory=ExitStack)

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def refs(self) -> list[BlobRef]:
        return [BlobRef(d.digest, d.size) for d in self.blobs]

    def descriptor(self, digest: str) -> Descriptor:
        return next(d for d in self.blobs if d.digest == digest)

    def close(self) -> None:
        self.source.close()
        self.stack.close()


def _from_store(store_path: str, reference: str) -> ImageSource:
    store = Store(store_path)
    image = store.resolve(reference)
    manifest = store.read_blob(image.manifest_digest)
    return blobs_in_store_source(
        store,
        manifest,
        image.manifest_media_type,
        description=f"image {image.reference} of the controller's store {store.root}",
    )


def resolve_kind(kind: str, src: str, path: Path | None) -> str:
    """The source kind to use: ``kind`` itself, or what ``auto`` finds at ``path``."""
    if kind != "auto":
        return kind
    if path is not None:
        found = detect_kind(path)
        if found is None:
            raise SourceError(
                f"{path} is neither an OCI layout, an OCI archive nor a docker-archive; "
                "set source to say what it is"
            )
        return found
    try:
        parse_image_ref(src)
    except InvalidReference:
        raise SourceError(f"source {src} is not a file on the controller") from None
    return "store"


def open_controller_image(
    kind: str, src: str, source_ref: str | None, path: Path | None, controller_store: str
) -> ControllerImage:
    """Open the source; ``path`` is ``src`` found on the controller (None for a reference)."""
    kind = resolve_kind(kind, src, path)
    if kind == "store":
        stack = ExitStack()
        store = Store(controller_store)
        # Shared store lock: the controller's garbage collection keeps the blobs we send.
        stack.enter_context(store.lock(shared=True))
        try:
            source = _from_store(controller_store, src)
        except BaseException:
            stack.close()
            raise
    else:
        if path is None:
            raise SourceError(f"{kind} {src} does not exist on the controller")
        stack = ExitStack()
        source = open_source(kind, str(path), source_ref)
    manifest, media_type = source.manifest, source.media_type
    if media_type == DOCKER_MANIFEST:
        manifest, media_type = docker_to_oci_manifest(manifest), OCI_MANIFEST
    parsed = parse_manifest(manifest, media_type, what=f"manifest of {source.description}")
    blobs = list({d.digest: d for d in (parsed.config, *parsed.layers)}.values())
    source = dataclasses.replace(source, manifest=manifest, media_type=media_type)
    return ControllerImage(source.description, manifest, media_type, blobs, source, stack)


def _is_plain_file(handle: IO[bytes]) -> bool:
    return isinstance(getattr(handle, "raw", None), FileIO)


class ChunkFiles:
    """Local files for the chunks of one blob, made one at a time and removed after use."""

    def __init__(self, image: ControllerImage, desc: Descriptor, tmp_dir: str | None) -> None:
        self.image = image
        self.desc = desc
        self.tmp_dir = tmp_dir

    @contextlib.contextmanager
    def chunk(self, offset: int, length: int) -> Iterator[str]:
        """A path holding bytes ``offset`` .. ``offset + length`` of the blob."""
        with self.image.source.open_blob(self.desc) as handle:
            if offset == 0 and length == self.desc.size and _is_plain_file(handle):
                name = getattr(handle, "name", "")
                if isinstance(name, str) and Path(name).stat().st_size == length:
                    yield name
                    return
            fd, tmp = tempfile.mkstemp(prefix="lapis-chunk-", dir=self.tmp_dir)
            try:
                with os.fdopen(fd, "wb") as out:
                    _copy_span(handle, out, offset, length)
                yield tmp
            finally:
                Path(tmp).unlink(missing_ok=True)


def _copy_span(handle: IO[bytes], out: IO[bytes], offset: int, length: int) -> None:
    try:
        handle.seek(offset)
    except (OSError, ValueError):
        _skip(handle, offset)
    left = length
    while left:
        piece = handle.read(min(_READ, left))
        if not piece:
            raise SourceError(f"blob ends {left} bytes before its declared size")
        out.write(piece)
        left -= len(piece)


def _skip(handle: IO[bytes], count: int) -> None:
    while count:
        piece = handle.read(min(_READ, count))
        if not piece:
            raise SourceError("blob ends before the chunk to send")
        count -= len(piece)
