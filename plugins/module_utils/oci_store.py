# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The image store of a host: an OCI image layout plus a layer cache keyed by chain id.

Layout of a store (default ``/var/lib/lapis``)::

    <store>/oci/                      an OCI image layout that skopeo and umoci read
        oci-layout                    {"imageLayoutVersion": "1.0.0"}
        index.json                    one entry per tag; annotation
                                      org.opencontainers.image.ref.name = full normalised
                                      reference (docker.io/library/alpine:latest)
        blobs/sha256/<hex>            manifests, configs and layer blobs, as imported
    <store>/layers/<chain-id hex>/    one unpacked layer, shared by every image using it
        diff/                         the layer in overlay format (whiteouts are 0/0 character
                                      devices, opaque directories carry trusted.overlay.opaque)
                                      -- this is what goes into an overlay lowerdir
        layer.json                    chain_id, diff_id, size, and the blob digests checked
                                      to decompress to that diff_id
    <store>/containers/<name>/chain-ids
                                      a container's claim on layer directories: one chain id
                                      (sha256:<hex>) per line; garbage collection keeps them
    <store>/locks/                    flock(2) files: store.lock, index.lock,
                                      layer-<hex>.lock, blob-<hex>.lock
    <store>/tmp/                      work area on the same file system (temp files, layer
                                      directories being unpacked); renamed into place when
                                      complete, emptied by garbage collection

Read/write API for the other modules (container, registry, fleet copy)::

    store = Store("/var/lib/lapis")
    image = store.resolve("alpine")          # -> StoredImage (ImageNotFound if absent)
    image.reference, image.manifest_digest, image.manifest, image.config
    image.layers                             # LayerInfo(digest, diff_id, chain_id,
                                             #           media_type, size), bottom first
    store.has_blob(digest); store.blob_path(digest); store.read_blob(digest)
    store.ingest_blob(path_or_binary_stream, digest, size)  # verified, atomic
    store.put_manifest(manifest_bytes, media_type) -> Descriptor
    store.tag(reference, descriptor) -> previous digest or None
    store.ensure_layers(image) -> [lowerdir, ...]            # topmost first, as overlayfs
                                                             # wants; unpacks missing ones
    store.list_images(); store.remove(reference); store.gc()
    store.use_image(container_name, reference) -> (StoredImage, lowerdirs)
                                             # ensures layers and registers the claim
    store.release_container(container_name)  # drops the claim (then gc() may free)
    with store.lock(shared=True): ...        # the store lock, see below

To add an image whose blobs a caller has ingested itself (a pull, a fleet copy), use
``image_import.import_image(store, name, image_import.blobs_in_store_source(store,
manifest_bytes))``: it checks every layer against the config's diff_ids and unpacks it
before it writes the manifest and the tag, which ``put_manifest`` + ``tag`` alone do not.

Locking: every writer holds ``locks/store.lock`` shared while it adds blobs, layers or
tags (``image_import.import_image`` and ``use_image`` do this themselves; a caller that
ingests blobs by hand and then tags must wrap the whole sequence in
``with store.lock(shared=True):``). ``gc()`` and ``remove()`` hold it exclusively, so a
blob ingested but not yet tagged is never collected under a running import.
``index.json`` is rewritten atomically (temp file + rename) under ``locks/index.lock``;
each layer is unpacked under ``locks/layer-<hex>.lock`` into ``tmp/`` and renamed into
``layers/`` when complete, so two runs never unpack the same layer twice and nobody
ever sees half a layer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import (
    INDEX_TYPES,
    OCI_INDEX,
    OCI_LAYOUT_VERSION,
    REF_NAME,
    Descriptor,
    ManifestError,
    canonical_json,
    chain_ids,
    digest_hex,
    layer_compression,
    load_json,
    manifest_media_type,
    parse_config,
    parse_index,
    parse_manifest,
    pick_platform,
    sha256_digest,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_refs import (
    InvalidReference,
    parse_image_ref,
)

DEFAULT_STORE = "/var/lib/lapis"
CLAIM_FILE = "chain-ids"
_CHUNK = 1 << 20
_MAX_DOCUMENT = 8 << 20
_LOCK_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")
_SOURCE_HINT = "the source is damaged or was cut short: export, copy or fetch it again"


class StoreError(Exception):
    """Something in the image store is missing, corrupt or cannot be written."""


class ImageNotFound(StoreError):
    """No image with that reference in the store."""


class BlobError(StoreError):
    """A blob whose content does not match its digest or size (truncated or corrupted)."""


class LayerMismatch(StoreError):
    """A layer whose uncompressed content does not match the diff_id in the image config."""


@dataclass(frozen=True)
class LayerInfo:
    """One layer of an image: blob digest, diff_id, chain id, media type and blob size."""

    digest: str
    diff_id: str
    chain_id: str
    media_type: str
    size: int

    @property
    def compression(self) -> str:
        """``none``, ``gzip`` or ``zstd``, from the media type."""
        return layer_compression(self.media_type)


@dataclass(frozen=True)
class StoredImage:
    """An image as the store holds it: reference, manifest, config and layers (bottom first)."""

    reference: str
    manifest_digest: str
    manifest_media_type: str
    manifest: dict[str, Any]
    config_digest: str
    config: dict[str, Any]
    layers: tuple[LayerInfo, ...]
    manifest_size: int = 0
    config_size: int = 0

    @property
    def chain_ids(self) -> list[str]:
        """Chain ids of the layers, bottom first."""
        return [layer.chain_id for layer in self.layers]

    @property
    def size(self) -> int:
        """Bytes of all blobs of the image (manifest, config and layer blobs)."""
        return self.manifest_size + self.config_size + sum(layer.size for layer in self.layers)


@dataclass
class GcResult:
    """What a garbage collection removed."""

    blobs: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    freed_bytes: int = 0


@dataclass(frozen=True)
class GcPlan:
    """What garbage collection will remove: blob digests and layer chain ids."""

    blobs: frozenset[str]
    layers: frozenset[str]


def plan_gc(
    present_blobs: Iterable[str],
    present_layers: Iterable[str],
    used_blobs: Iterable[str],
    used_layers: Iterable[str],
) -> GcPlan:
    """Decide what to remove: everything present that nothing uses."""
    return GcPlan(
        blobs=frozenset(present_blobs) - frozenset(used_blobs),
        layers=frozenset(present_layers) - frozenset(used_layers),
    )


def referenced_content(
    roots: Iterable[Descriptor], read_doc: Callable[[str], bytes | None]
) -> tuple[set[str], set[str]]:
    """Blob digests and chain ids reachable from index entries ``roots``.

    ``read_doc(digest)`` returns a manifest, index or config blob, or ``None`` when the
    store lacks it; what cannot be read keeps only the digests already known.
    """
    blobs: set[str] = set()
    layers: set[str] = set()
    todo = list(roots)
    while todo:
        desc = todo.pop()
        if desc.digest in blobs:
            continue
        blobs.add(desc.digest)
        data = read_doc(desc.digest)
        if data is None:
            continue
        try:
            doc = load_json(data, desc.digest)
            if manifest_media_type(doc, desc.media_type) in INDEX_TYPES:
                todo.extend(parse_index(data, what=desc.digest))
                continue
            manifest = parse_manifest(data, desc.media_type, what=desc.digest)
        except ManifestError:
            continue
        blobs.add(manifest.config.digest)
        blobs.update(layer.digest for layer in manifest.layers)
        config = read_doc(manifest.config.digest)
        if config is not None:
            with contextlib.suppress(ManifestError):
                layers.update(chain_ids(parse_config(config).diff_ids))
    return blobs, layers


def build_stored_image(
    reference: str, manifest_data: bytes, media_type: str | None, config_data: bytes
) -> StoredImage:
    """A ``StoredImage`` from manifest and config bytes (checked, not necessarily stored)."""
    manifest = parse_manifest(manifest_data, media_type, what=f"manifest of {reference}")
    if sha256_digest(config_data) != manifest.config.digest:
        raise BlobError(
            f"image {reference}: config {manifest.config.digest} is corrupted: its content "
            f"has digest {sha256_digest(config_data)}"
        )
    config = parse_config(config_data, what=f"config of {reference}")
    if len(config.diff_ids) != len(manifest.layers):
        raise ManifestError(
            f"image {reference}: the manifest lists {len(manifest.layers)} layers but the "
            f"config lists {len(config.diff_ids)} diff_ids"
        )
    layers = tuple(
        LayerInfo(layer.digest, diff_id, chain, layer.media_type, layer.size)
        for layer, diff_id, chain in zip(
            manifest.layers, config.diff_ids, chain_ids(config.diff_ids), strict=True
        )
    )
    return StoredImage(
        reference=reference,
        manifest_digest=sha256_digest(manifest_data),
        manifest_media_type=manifest.media_type,
        manifest=manifest.doc,
        config_digest=manifest.config.digest,
        config=config.doc,
        layers=layers,
        manifest_size=len(manifest_data),
        config_size=len(config_data),
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, and rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).chmod(mode)
        Path(tmp).rename(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_tree(path: Path) -> None:
    """Remove a directory tree that may hold read-only directories (we run as root)."""
    shutil.rmtree(path, ignore_errors=False)


class Store:
    """An image store rooted at ``root``; see the module docstring for layout and API."""

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_STORE) -> None:
        self.root = Path(root)
        self.oci_dir = self.root / "oci"
        self.blobs_dir = self.oci_dir / "blobs" / "sha256"
        self.index_path = self.oci_dir / "index.json"
        self.layers_dir = self.root / "layers"
        self.containers_dir = self.root / "containers"
        self.locks_dir = self.root / "locks"
        self.tmp_dir = self.root / "tmp"
        self._local = threading.local()
        self.warnings: list[str] = []
        """Degradations met while unpacking layers in this process (said once each)."""

    # -- set-up and locks -------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the store has been initialised (its ``oci-layout`` file exists)."""
        return (self.oci_dir / "oci-layout").is_file()

    def init(self) -> None:
        """Create the store's directories, ``oci-layout`` and an empty ``index.json``."""
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store {self.root} exists and is not a directory")
        for path in (self.root, self.oci_dir):
            path.mkdir(mode=0o711, parents=True, exist_ok=True)
        for path in (self.blobs_dir, self.layers_dir, self.containers_dir, self.tmp_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.locks_dir.mkdir(mode=0o700, exist_ok=True)
        layout = self.oci_dir / "oci-layout"
        if not layout.exists():
            write_atomic(layout, canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
        if not self.index_path.exists():
            with self.lock("index"):
                if not self.index_path.exists():
                    self._write_index([])

    @contextlib.contextmanager
    def lock(self, name: str = "store", shared: bool = False) -> Iterator[None]:
        """Hold ``<store>/locks/<name>.lock`` (flock); re-entrant within this ``Store``."""
        if not _LOCK_NAME.fullmatch(name):
            raise StoreError(f"invalid lock name {name!r}")
        held: dict[str, bool] = self._local.__dict__.setdefault("held", {})
        if name in held:
            if held[name] and not shared:
                raise StoreError(f"lock {name} is held shared; cannot upgrade it to exclusive")
            yield
            return
        self.locks_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.locks_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            held[name] = shared
            yield
        finally:
            held.pop(name, None)
            os.close(fd)

    # -- blobs ---------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Path of a blob (which may not exist); ``ManifestError`` for a malformed digest."""
        return self.blobs_dir / digest_hex(digest)

    def has_blob(self, digest: str) -> bool:
        """Whether the store holds the blob ``digest``."""
        return self.blob_path(digest).is_file()

    def read_blob(self, digest: str, limit: int = _MAX_DOCUMENT) -> bytes:
        """A small blob (manifest, config), checked against its digest."""
        path = self.blob_path(digest)
        try:
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
        except FileNotFoundError:
            raise BlobError(f"blob {digest} is missing from store {self.root}") from None
        if len(data) > limit:
            raise BlobError(f"blob {digest} is larger than {limit} bytes; not a JSON document")
        if sha256_digest(data) != digest:
            raise BlobError(
                f"blob {digest} in store {self.root} is corrupted (its content does not "
                "match its digest); remove the image and import it again"
            )
        return data

    def ingest_blob(
        self, src: str | os.PathLike[str] | IO[bytes], digest: str, size: int | None = None
    ) -> bool:
        """Copy ``src`` into the store as blob ``digest``, checking digest and size.

        Writes a temp file in ``tmp/`` and renames it into ``blobs/`` only when both match.
        Returns False when the store already had the blob (``src`` is then not read).
        """
        target = self.blob_path(digest)
        if target.is_file():
            return False
        self.init()
        with self.lock(shared=True), self.lock(f"blob-{digest_hex(digest)}"):
            if target.is_file():
                return False
            if isinstance(src, (str, os.PathLike)):
                with open(src, "rb") as handle:
                    self._copy_verified(handle, target, digest, size)
            else:
                self._copy_verified(src, target, digest, size)
        return True

    def _copy_verified(self, src: IO[bytes], target: Path, digest: str, size: int | None) -> None:
        fd, tmp = tempfile.mkstemp(prefix="blob-", dir=self.tmp_dir)
        try:
            hasher = hashlib.sha256()
            count = 0
            with os.fdopen(fd, "wb") as out:
                while True:
                    chunk = src.read(_CHUNK)
                    if not chunk:
                        break
                    count += len(chunk)
                    if size is not None and count > size:
                        raise BlobError(
                            f"blob {digest} is larger than its declared {size} bytes; "
                            f"{_SOURCE_HINT}"
                        )
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size is not None and count != size:
                raise BlobError(
                    f"blob {digest} is truncated: {count} bytes read, {size} declared; "
                    f"{_SOURCE_HINT}"
                )
            actual = "sha256:" + hasher.hexdigest()
            if actual != digest:
                raise BlobError(
                    f"blob {digest} is corrupted: its content has digest {actual}; {_SOURCE_HINT}"
                )
            Path(tmp).chmod(0o644)
            Path(tmp).rename(target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def ingest_bytes(
        self, data: bytes, digest: str | None = None, added: list[str] | None = None
    ) -> str:
        """Store ``data`` as a blob (checked against ``digest`` when given); return its digest.

        When this call wrote the blob (it was not there), its digest is appended to ``added``.
        """
        actual = sha256_digest(data)
        if digest is not None and digest != actual:
            raise BlobError(f"blob {digest} is corrupted: its content has digest {actual}")
        if not self.has_blob(actual):
            self.init()
            with self.lock(shared=True), self.lock(f"blob-{digest_hex(actual)}"):
                if not self.has_blob(actual):
                    fd, tmp = tempfile.mkstemp(prefix="blob-", dir=self.tmp_dir)
                    with os.fdopen(fd, "wb") as out:
                        out.write(data)
                        out.flush()
                        os.fsync(out.fileno())
                    Path(tmp).chmod(0o644)
                    Path(tmp).rename(self.blob_path(actual))
                    if added is not None:
                        added.append(actual)
        return actual

    def put_manifest(
        self, data: bytes, media_type: str | None = None, added: list[str] | None = None
    ) -> Descriptor:
        """Store a manifest (or index) whose referenced blobs are all present already.

        When this call wrote the manifest blob, its digest is appended to ``added``.
        """
        doc = load_json(data, "manifest")
        media_type = manifest_media_type(doc, media_type)
        if media_type in INDEX_TYPES:
            needed = [d.digest for d in parse_index(data, media_type)]
        else:
            manifest = parse_manifest(data, media_type)
            needed = [manifest.config.digest] + [layer.digest for layer in manifest.layers]
        missing = [d for d in needed if not self.has_blob(d)]
        if missing:
            raise StoreError(
                f"manifest {sha256_digest(data)} refers to blobs missing from store "
                f"{self.root}: {', '.join(missing)}; ingest them first"
            )
        digest = self.ingest_bytes(data, added=added)
        return Descriptor(media_type=media_type, digest=digest, size=len(data))

    # -- index.json and tags -------------------------------------------------------------

    def read_index(self) -> list[Descriptor]:
        """The entries of ``index.json`` (empty when the store is not initialised)."""
        try:
            data = self.index_path.read_bytes()
        except FileNotFoundError:
            return []
        try:
            return parse_index(data, OCI_INDEX, what=str(self.index_path))
        except ManifestError as exc:
            raise StoreError(f"{exc}; the store's index.json is damaged") from exc

    def _write_index(self, entries: list[Descriptor]) -> None:
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [entry.to_dict() for entry in entries],
        }
        write_atomic(self.index_path, json.dumps(doc, indent=1).encode() + b"\n")

    def tags(self) -> dict[str, Descriptor]:
        """Reference name -> manifest descriptor, for every tagged entry of ``index.json``."""
        return {e.annotations[REF_NAME]: e for e in self.read_index() if REF_NAME in e.annotations}

    def lookup(self, reference: str) -> Descriptor | None:
        """The index entry for ``reference`` (normalised when it parses), or None."""
        tags = self.tags()
        try:
            ref = parse_image_ref(reference)
        except InvalidReference:
            return tags.get(reference)
        found = tags.get(str(ref)) or tags.get(reference)
        if found is None and ref.digest:
            for name, desc in tags.items():
                with contextlib.suppress(InvalidReference):
                    if desc.digest == ref.digest and parse_image_ref(name).name == ref.name:
                        return desc
        return found

    def tag(self, reference: str, descriptor: Descriptor) -> str | None:
        """Point ``reference`` at ``descriptor`` in ``index.json``; return the previous digest."""
        name = str(parse_image_ref(reference))
        if not self.has_blob(descriptor.digest):
            raise StoreError(f"cannot tag {name}: manifest {descriptor.digest} is not in the store")
        self.init()
        with self.lock("index"):
            entries = self.read_index()
            previous = None
            kept = []
            for entry in entries:
                if entry.annotations.get(REF_NAME) == name:
                    previous = entry.digest
                else:
                    kept.append(entry)
            annotations = dict(descriptor.annotations)
            annotations[REF_NAME] = name
            new = Descriptor(descriptor.media_type, descriptor.digest, descriptor.size, annotations)
            if previous != descriptor.digest or len(kept) != len(entries) - 1:
                self._write_index([*kept, new])
            return previous

    def untag(self, reference: str) -> str | None:
        """Remove ``reference`` from ``index.json``; return the digest it named, or None."""
        desc = self.lookup(reference)
        if desc is None:
            return None
        name = desc.annotations.get(REF_NAME)
        with self.lock("index"):
            entries = self.read_index()
            kept = [e for e in entries if e.annotations.get(REF_NAME) != name]
            if len(kept) == len(entries):
                return None
            self._write_index(kept)
        return desc.digest

    # -- images --------------------------------------------------------------------------

    def resolve(self, reference: str) -> StoredImage:
        """The image tagged ``reference``; ``ImageNotFound`` when the store has no such tag."""
        desc = self.lookup(reference)
        if desc is None:
            raise ImageNotFound(
                f"image {reference} is not in store {self.root}; import it first "
                "with lapis.layers.image"
            )
        return self.load_image(desc.annotations.get(REF_NAME, reference), desc)

    def load_image(self, reference: str, desc: Descriptor) -> StoredImage:
        """Read and check the manifest and config that ``desc`` points at."""
        data = self.read_blob(desc.digest)
        doc = load_json(data, f"manifest {desc.digest}")
        if manifest_media_type(doc, desc.media_type) in INDEX_TYPES:
            entry = pick_platform(parse_index(data, what=f"index {desc.digest}"), reference)
            desc = entry
            data = self.read_blob(desc.digest)
        manifest = parse_manifest(data, desc.media_type, what=f"manifest of {reference}")
        config_data = self.read_blob(manifest.config.digest)
        return build_stored_image(reference, data, desc.media_type, config_data)

    def list_images(
        self, on_error: Callable[[str, Exception], None] | None = None
    ) -> list[StoredImage]:
        """Every tagged image, sorted by reference; unreadable ones go to ``on_error``."""
        images = []
        for name, desc in sorted(self.tags().items()):
            try:
                images.append(self.load_image(name, desc))
            except (StoreError, ManifestError) as exc:
                if on_error is not None:
                    on_error(name, exc)
        return images

    # -- layers --------------------------------------------------------------------------

    def layer_path(self, chain_id: str) -> Path:
        """``<store>/layers/<chain-id hex>`` (holding ``diff/`` and ``layer.json``)."""
        return self.layers_dir / digest_hex(chain_id)

    def lowerdir(self, chain_id: str) -> Path:
        """The overlay-format directory of a layer: ``<store>/layers/<hex>/diff``."""
        return self.layer_path(chain_id) / "diff"

    def has_layer(self, chain_id: str) -> bool:
        """Whether the layer with this chain id is unpacked (complete) in the store."""
        return (self.layer_path(chain_id) / "layer.json").is_file()

    def layer_metadata(self, chain_id: str) -> dict[str, Any]:
        """The ``layer.json`` of an unpacked layer ({} when it is missing or unreadable)."""
        try:
            doc = json.loads((self.layer_path(chain_id) / "layer.json").read_bytes())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def ensure_layers(self, image: StoredImage, verify: bool = False) -> list[str]:
        """Unpack the image's missing layers; return its lowerdirs topmost first.

        With ``verify``, a layer directory that exists already is also checked to match
        this image's layer blob (the blob is decompressed and hashed against the diff_id
        once, then remembered in ``layer.json``).
        """
        with self.lock(shared=True):
            self.init()
            for layer in image.layers:
                self.ensure_layer(layer, verify=verify, image=image.reference)
        return [str(self.lowerdir(layer.chain_id)) for layer in reversed(image.layers)]

    def ensure_layer(self, layer: LayerInfo, verify: bool = False, image: str = "") -> bool:
        """Unpack one layer unless present; True when this call unpacked it."""
        hexid = digest_hex(layer.chain_id)
        self.init()
        with self.lock(shared=True), self.lock(f"layer-{hexid}"):
            if self.has_layer(layer.chain_id):
                if verify and layer.digest not in self.layer_metadata(layer.chain_id).get(
                    "blobs", []
                ):
                    self._verify_layer_blob(layer, image)
                return False
            self._unpack_layer(layer, image)
            return True

    def _layer_blob(self, layer: LayerInfo, image: str) -> Path:
        path = self.blob_path(layer.digest)
        if not path.is_file():
            raise BlobError(f"image {image}: layer blob {layer.digest} is missing from the store")
        return path

    def _unpack_layer(self, layer: LayerInfo, image: str) -> None:
        from ansible_collections.lapis.layers.plugins.module_utils.layer_tar import (  # noqa: PLC0415
            LayerError,
            extract_layer,
        )

        blob = self._layer_blob(layer, image)
        if self.layer_path(layer.chain_id).exists():
            # A directory without layer.json was not made by us (renames are atomic):
            # move it out of the way rather than trusting or merging it.
            stale = Path(tempfile.mkdtemp(prefix="stale-", dir=self.tmp_dir))
            self.layer_path(layer.chain_id).rename(stale / "layer")
            remove_tree(stale)
        work = Path(tempfile.mkdtemp(prefix=f"layer-{digest_hex(layer.chain_id)[:12]}-",
                                     dir=self.tmp_dir))  # fmt: skip
        try:
            (work / "diff").mkdir(mode=0o755)
            try:
                result = extract_layer(str(blob), str(work / "diff"), mode="overlay",
                                       compression=layer.compression)  # fmt: skip
            except LayerError as exc:
                raise StoreError(f"image {image}: layer {layer.digest}: {exc}") from exc
            self._check_layer_result(layer, image, result.diff_id, result.compressed_digest)
            for warning in result.warnings:
                text = f"image {image}: layer {layer.digest}: {warning}"
                if text not in self.warnings:
                    self.warnings.append(text)
            meta = {
                "chain_id": layer.chain_id,
                "diff_id": layer.diff_id,
                "size": result.size,
                "entries": result.entries,
                "blobs": [layer.digest],
            }
            write_atomic(work / "layer.json", canonical_json(meta))
            work.rename(self.layer_path(layer.chain_id))
        except BaseException:
            remove_tree(work)
            raise

    @staticmethod
    def _check_layer_result(layer: LayerInfo, image: str, diff_id: str, digest: str) -> None:
        if digest != layer.digest:
            raise BlobError(
                f"image {image}: layer blob {layer.digest} is corrupted: its content has "
                f"digest {digest}"
            )
        if diff_id != layer.diff_id:
            raise LayerMismatch(
                f"image {image}: layer {layer.digest} decompresses to diff_id {diff_id}, but "
                f"the image config says {layer.diff_id}; the image is corrupted or was "
                "assembled wrongly"
            )

    def _verify_layer_blob(self, layer: LayerInfo, image: str) -> None:
        from ansible_collections.lapis.layers.plugins.module_utils.layer_tar import (  # noqa: PLC0415
            LayerError,
            open_layer_stream,
        )

        blob = self._layer_blob(layer, image)
        hasher = hashlib.sha256()
        try:
            stream = open_layer_stream(str(blob), layer.compression)
            try:
                for chunk in iter(lambda: stream.read(_CHUNK), b""):
                    hasher.update(chunk)
            finally:
                stream.close()
        except (LayerError, OSError, EOFError, ValueError) as exc:
            raise BlobError(
                f"image {image}: layer blob {layer.digest} cannot be read: {exc}"
            ) from exc
        self._check_layer_result(layer, image, "sha256:" + hasher.hexdigest(), layer.digest)
        meta = self.layer_metadata(layer.chain_id)
        meta["blobs"] = sorted({*meta.get("blobs", []), layer.digest})
        write_atomic(self.layer_path(layer.chain_id) / "layer.json", canonical_json(meta))

    def present_layers(self) -> set[str]:
        """Chain ids of the layer directories in the store."""
        if not self.layers_dir.is_dir():
            return set()
        return {f"sha256:{p.name}" for p in self.layers_dir.iterdir() if len(p.name) == 64}

    def present_blobs(self) -> set[str]:
        """Digests of the blobs in the store."""
        if not self.blobs_dir.is_dir():
            return set()
        return {f"sha256:{p.name}" for p in self.blobs_dir.iterdir() if len(p.name) == 64}

    # -- containers' claims on layers ----------------------------------------------------

    def use_image(self, container: str, reference: str) -> tuple[StoredImage, list[str]]:
        """Ensure ``reference``'s layers and record that ``container`` uses them.

        Writes ``<store>/containers/<container>/chain-ids`` (one chain id a line) under
        the shared store lock, so garbage collection never removes a layer directory a
        container's overlay uses. Returns the image and its lowerdirs, topmost first.
        """
        with self.lock(shared=True):
            image = self.resolve(reference)
            lowerdirs = self.ensure_layers(image)
            self.register_container(container, image.chain_ids)
        return image, lowerdirs

    def _claim_path(self, container: str) -> Path:
        if not container or "/" in container or container in {".", ".."}:
            raise StoreError(f"invalid container name {container!r}")
        return self.containers_dir / container / CLAIM_FILE

    def register_container(self, container: str, layer_chain_ids: Iterable[str]) -> None:
        """Record (atomically) that ``container`` uses these layer directories."""
        path = self._claim_path(container)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, "".join(f"{c}\n" for c in layer_chain_ids).encode(), 0o600)

    def release_container(self, container: str) -> bool:
        """Drop ``container``'s claim on layer directories; True when there was one."""
        try:
            self._claim_path(container).unlink()
        except FileNotFoundError:
            return False
        return True

    def container_claims(self) -> dict[str, list[str]]:
        """Container name -> chain ids it claims, from ``containers/*/chain-ids``."""
        claims: dict[str, list[str]] = {}
        if not self.containers_dir.is_dir():
            return claims
        for path in sorted(self.containers_dir.glob(f"*/{CLAIM_FILE}")):
            text = path.read_text(errors="replace")
            claims[path.parent.name] = [line.strip() for line in text.splitlines() if line.strip()]
        return claims

    # -- removal and garbage collection --------------------------------------------------

    def remove(self, reference: str) -> tuple[str | None, GcResult]:
        """Untag ``reference`` and collect what nothing references any more."""
        with self.lock():
            previous = self.untag(reference)
            result = self.gc() if previous else GcResult()
        return previous, result

    def gc(self, only: Iterable[str] | None = None) -> GcResult:
        """Remove blobs and layer directories that no tag and no container references.

        ``only`` limits removal to those digests / chain ids (a failed import cleans up
        what it created this way). Also empties ``tmp/``. Holds the store lock exclusively.
        """
        result = GcResult()
        with self.lock():
            if not self.exists():
                return result
            used_blobs, used_layers = referenced_content(self.read_index(), self._read_doc)
            for claimed in self.container_claims().values():
                used_layers.update(claimed)
            plan = plan_gc(self.present_blobs(), self.present_layers(), used_blobs, used_layers)
            limit = set(only) if only is not None else None
            for digest in sorted(plan.blobs):
                if limit is None or digest in limit:
                    path = self.blob_path(digest)
                    result.freed_bytes += path.stat().st_size
                    path.unlink()
                    self._drop_lock(f"blob-{digest_hex(digest)}")
                    result.blobs.append(digest)
            for chain_id in sorted(plan.layers):
                if limit is None or chain_id in limit:
                    self._remove_layer(chain_id)
                    result.layers.append(chain_id)
            if limit is None:
                self._clean_tmp()
        return result

    def _read_doc(self, digest: str) -> bytes | None:
        try:
            return self.read_blob(digest)
        except (BlobError, ManifestError):
            return None

    def _remove_layer(self, chain_id: str) -> None:
        path = self.layer_path(chain_id)
        trash = Path(tempfile.mkdtemp(prefix="gc-", dir=self.tmp_dir))
        path.rename(trash / "layer")
        remove_tree(trash)
        self._drop_lock(f"layer-{digest_hex(chain_id)}")

    def _drop_lock(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.locks_dir / f"{name}.lock").unlink()

    def _clean_tmp(self) -> None:
        if not self.tmp_dir.is_dir():
            return
        for entry in self.tmp_dir.iterdir():
            try:
                if entry.is_dir() and not entry.is_symlink():
                    remove_tree(entry)
                else:
                    entry.unlink()
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
