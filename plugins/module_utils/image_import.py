# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Import images into the store from an OCI layout, an OCI archive or a docker-archive.

``open_source(kind, path, source_ref)`` opens a source and gives an ``ImageSource``: the
manifest bytes and a way to read each blob. ``import_image(store, name, source)`` then
gathers (manifest digest, current tag), decides (nothing to do, or import) and acts:
config and layer blobs are ingested with digest and size checks, every layer is
unpacked (or, when its directory exists, its blob is checked) against the config's
diff_id, the manifest is stored and only then is the tag written. A failure removes
what this import added and nothing else references.

A docker-archive (``docker save``, ``skopeo copy ... docker-archive:``) has no manifest
blob; the import writes an OCI manifest for it (canonical JSON, so the digest is the
same on every import of the same archive), keeping the config and layer blobs as they
are in the archive. A Docker schema2 manifest is stored in its OCI form for the same
reason skopeo converts it when it writes a layout: tools reading OCI layouts skip
entries with Docker media types.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ContextManager, Union

from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import (
    DOCKER_MANIFEST,
    INDEX_TYPES,
    OCI_CONFIG,
    OCI_LAYER_FOR,
    OCI_MANIFEST,
    REF_NAME,
    Descriptor,
    ManifestError,
    build_oci_manifest,
    digest_hex,
    docker_to_oci_manifest,
    load_json,
    manifest_media_type,
    parse_index,
    parse_manifest,
    pick_platform,
    sha256_digest,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_refs import (
    InvalidReference,
    parse_image_ref,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import (
    BlobError,
    Store,
    StoredImage,
    StoreError,
    build_stored_image,
)

SOURCES = ("oci", "oci-archive", "docker-archive")
_MAX_DOCUMENT = 8 << 20
_CHUNK = 1 << 20
_MAX_LINKS = 40


class SourceError(Exception):
    """An image source (layout, archive) that cannot be read or has no such image."""


# -- readers: a directory or a tar archive, addressed by relative names -------------------


class _DirReader:
    """Files of a directory, by relative name, never outside it."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise SourceError(f"OCI layout {root} is not a directory")
        self.root = root
        self.label = str(root)

    def _path(self, name: str) -> Path:
        clean = posixpath.normpath(name)
        if clean.startswith(("/", "..")):
            raise SourceError(f"{self.label}: refusing path {name!r} outside the layout")
        return self.root / clean

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        path = self._path(name)
        if not path.is_file():
            raise SourceError(f"{self.label}: {name} is missing")
        with open(path, "rb") as handle:
            yield handle

    def close(self) -> None:
        """Nothing to release for a directory."""


class _TarReader:
    """Members of a tar archive by name (``./`` prefixes ignored, links inside followed)."""

    def __init__(self, path: Path) -> None:
        self.label = str(path)
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 -- closed by close()
            members = self.tar.getmembers()
        except FileNotFoundError:
            raise SourceError(f"archive {path} does not exist") from None
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise SourceError(f"archive {path} cannot be read as a tar archive: {exc}") from exc
        self.members = {self._norm(m.name): m for m in members}

    @staticmethod
    def _norm(name: str) -> str:
        return posixpath.normpath(name.lstrip("/")) if name.strip("./") else "."

    def _resolve(self, name: str) -> tarfile.TarInfo:
        current = self._norm(name)
        for _hop in range(_MAX_LINKS):
            if current.startswith(".."):
                break
            member = self.members.get(current)
            if member is None:
                raise SourceError(f"archive {self.label} has no member {name!r}")
            if member.isfile():
                return member
            if member.issym():
                current = self._norm(posixpath.join(posixpath.dirname(current), member.linkname))
            elif member.islnk():
                current = self._norm(member.linkname)
            else:
                raise SourceError(f"archive {self.label}: member {name!r} is not a file")
        raise SourceError(
            f"archive {self.label}: member {name!r} is a link that leads outside the archive "
            "or loops"
        )

    def exists(self, name: str) -> bool:
        try:
            self._resolve(name)
        except SourceError:
            return False
        return True

    def size(self, name: str) -> int:
        return self._resolve(name).size

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        member = self._resolve(name)
        handle = self.tar.extractfile(member)
        if handle is None:
            raise SourceError(f"archive {self.label}: member {name!r} cannot be read")
        with handle:
            yield handle

    def close(self) -> None:
        self.tar.close()


_Reader = Union[_DirReader, _TarReader]


def _read_small(reader: _Reader, name: str) -> bytes:
    with reader.open(name) as handle:
        data = handle.read(_MAX_DOCUMENT + 1)
    if len(data) > _MAX_DOCUMENT:
        raise SourceError(f"{reader.label}: {name} is too large for a JSON document")
    return data


# -- sources -----------------------------------------------------------------------------


@dataclass
class ImageSource:
    """An image ready to import: manifest bytes and a blob opener by descriptor."""

    description: str
    manifest: bytes
    media_type: str
    open_blob: Callable[[Descriptor], ContextManager[IO[bytes]]]
    close: Callable[[], None] = lambda: None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """Digest of the manifest bytes."""
        return sha256_digest(self.manifest)


def _ref_matches(candidate: str, wanted: str) -> bool:
    if candidate == wanted:
        return True
    try:
        return parse_image_ref(candidate) == parse_image_ref(wanted)
    except InvalidReference:
        return False


def _pick(names: list[str], source_ref: str | None, what: str) -> int:
    """Index of the image that ``source_ref`` names among ``names`` (one per image)."""
    if source_ref is None:
        if len(names) == 1:
            return 0
        listed = ", ".join(n or "(untagged)" for n in names) or "none"
        raise SourceError(
            f"{what} holds {len(names)} images ({listed}); set source_ref to pick one"
        )
    if source_ref.startswith("@") and source_ref[1:].isdigit():
        index = int(source_ref[1:])
        if index < len(names):
            return index
    for index, name in enumerate(names):
        if name and any(_ref_matches(part, source_ref) for part in name.split(", ")):
            return index
    raise SourceError(
        f"{what} has no image {source_ref!r} (it holds: {', '.join(filter(None, names))})"
    )


def _layout_source(reader: _Reader, source_ref: str | None, kind: str) -> ImageSource:
    what = f"{kind} {reader.label}"
    if not reader.exists("oci-layout"):
        raise SourceError(f"{what} is not an OCI image layout (no oci-layout file)")
    try:
        entries = parse_index(_read_small(reader, "index.json"), what=f"{what} index.json")
    except ManifestError as exc:
        raise SourceError(str(exc)) from exc
    names = [e.annotations.get(REF_NAME, "") for e in entries]
    entry = entries[_pick(names, source_ref, what)]

    def blob_name(desc: Descriptor) -> str:
        return f"blobs/sha256/{digest_hex(desc.digest)}"

    def read_doc(desc: Descriptor) -> bytes:
        data = _read_small(reader, blob_name(desc))
        if sha256_digest(data) != desc.digest or len(data) != desc.size:
            raise BlobError(
                f"{what}: blob {desc.digest} is corrupted (content digest "
                f"{sha256_digest(data)}, {len(data)} bytes, {desc.size} declared)"
            )
        return data

    data = read_doc(entry)
    media_type = manifest_media_type(load_json(data, f"{what} {entry.digest}"), entry.media_type)
    if media_type in INDEX_TYPES:
        entry = pick_platform(parse_index(data, what=f"{what} index {entry.digest}"), what)
        data = read_doc(entry)
        media_type = entry.media_type
    return ImageSource(
        description=what,
        manifest=data,
        media_type=media_type,
        open_blob=lambda desc: reader.open(blob_name(desc)),
        close=reader.close,
        annotations=dict(entry.annotations),
    )


def _detect_compression(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return "none"


def _docker_archive_source(reader: _TarReader, source_ref: str | None) -> ImageSource:
    what = f"docker-archive {reader.label}"
    try:
        listing = _read_small(reader, "manifest.json")
    except SourceError:
        raise SourceError(f"{what} has no manifest.json; is it a docker-archive?") from None
    try:
        images = json.loads(listing)
    except ValueError as exc:
        raise SourceError(f"{what}: manifest.json is not valid JSON: {exc}") from exc
    if not isinstance(images, list) or not all(isinstance(i, dict) for i in images):
        raise SourceError(f"{what}: manifest.json is not a list of images")
    names = [", ".join(str(t) for t in (i.get("RepoTags") or [])) for i in images]
    image = images[_pick(names, source_ref, what)]
    config_name = image.get("Config")
    layer_names = image.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise SourceError(f"{what}: manifest.json entry lacks Config or Layers")
    config_data = _read_small(reader, config_name)
    config = Descriptor(OCI_CONFIG, sha256_digest(config_data), len(config_data))
    diff_ids = load_json(config_data, f"{what} config").get("rootfs", {}).get("diff_ids") or []
    if len(diff_ids) != len(layer_names):
        raise SourceError(
            f"{what}: {len(layer_names)} layers listed but the config has {len(diff_ids)} diff_ids"
        )
    names_by_digest: dict[str, str] = {config.digest: config_name}
    layers = []
    for name, diff_id in zip(layer_names, diff_ids, strict=True):
        with reader.open(str(name)) as handle:
            compression = _detect_compression(handle.read(4))
        if compression == "none" and isinstance(diff_id, str):
            # The blob of an uncompressed layer is its diff_id; ingestion checks that.
            digest = diff_id
        else:
            digest = _hash_member(reader, str(name))
        names_by_digest[digest] = str(name)
        layers.append(Descriptor(OCI_LAYER_FOR[compression], digest, reader.size(str(name))))
    manifest = build_oci_manifest(config, layers)

    def open_blob(desc: Descriptor) -> ContextManager[IO[bytes]]:
        return reader.open(names_by_digest[desc.digest])

    return ImageSource(what, manifest, parse_manifest(manifest).media_type, open_blob, reader.close)


def _hash_member(reader: _Reader, name: str) -> str:
    hasher = hashlib.sha256()
    with reader.open(name) as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def blobs_in_store_source(
    store: Store, manifest: bytes, media_type: str | None = None, description: str = ""
) -> ImageSource:
    """An ``ImageSource`` whose blobs are already in ``store`` (pulled or copied there).

    ``import_image(store, name, blobs_in_store_source(store, manifest))`` then checks
    every layer against the config's diff_ids, unpacks what is missing, stores the
    manifest and writes the tag: the same guarantees as a local import.
    """
    doc = load_json(manifest, "manifest")

    @contextlib.contextmanager
    def open_blob(desc: Descriptor) -> Iterator[IO[bytes]]:
        try:
            handle = open(store.blob_path(desc.digest), "rb")  # noqa: SIM115 -- closed below
        except FileNotFoundError:
            raise SourceError(f"blob {desc.digest} is not in store {store.root}") from None
        with handle:
            yield handle

    return ImageSource(
        description=description or f"store {store.root}",
        manifest=manifest,
        media_type=manifest_media_type(doc, media_type),
        open_blob=open_blob,
    )


def open_source(kind: str, path: str, source_ref: str | None = None) -> ImageSource:
    """Open an image source of ``kind`` (``oci``, ``oci-archive``, ``docker-archive``)."""
    location = Path(path)
    if kind == "oci":
        return _layout_source(_DirReader(location), source_ref, kind)
    if kind not in ("oci-archive", "docker-archive"):
        raise SourceError(f"unknown image source {kind!r}; use one of {', '.join(SOURCES)}")
    if not location.is_file():
        raise SourceError(f"{kind} {path} does not exist or is not a file")
    reader = _TarReader(location)
    try:
        if kind == "oci-archive":
            return _layout_source(reader, source_ref, kind)
        return _docker_archive_source(reader, source_ref)
    except BaseException:
        reader.close()
        raise


# -- the import ----------------------------------------------------------------------------


@dataclass
class ImportResult:
    """Outcome of an import: the tag, its digest before and after, and what was added."""

    reference: str
    manifest_digest: str
    previous_digest: str | None
    changed: bool
    blobs_added: list[str] = field(default_factory=list)
    layers_unpacked: list[str] = field(default_factory=list)
    image: StoredImage | None = None
    source_digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result fields a module returns."""
        return {
            "reference": self.reference,
            "manifest_digest": self.manifest_digest,
            "previous_digest": self.previous_digest,
            "source_manifest_digest": self.source_digest,
            "blobs_added": list(self.blobs_added),
            "layers_unpacked": list(self.layers_unpacked),
        }


def is_complete(store: Store, image: StoredImage) -> bool:
    """Whether every blob of ``image`` is in the store and every layer is unpacked."""
    digests = [image.manifest_digest, image.config_digest] + [x.digest for x in image.layers]
    return all(store.has_blob(d) for d in digests) and all(
        store.has_layer(x.chain_id) for x in image.layers
    )


def import_image(
    store: Store,
    name: str,
    source: ImageSource,
    force: bool = False,
    check_mode: bool = False,
) -> ImportResult:
    """Import ``source`` into ``store`` as ``name``; see the module docstring."""
    ref = parse_image_ref(name)
    reference = str(ref)
    original = source.digest
    if source.media_type == DOCKER_MANIFEST:
        source = dataclasses.replace(
            source, manifest=docker_to_oci_manifest(source.manifest), media_type=OCI_MANIFEST
        )
    digest = source.digest
    if ref.digest is not None and ref.digest not in (digest, original):
        raise SourceError(
            f"{source.description}: {name} pins manifest {ref.digest}, but the source's "
            f"manifest is {digest}; drop the digest from the name or pick another source_ref"
        )
    parse_manifest(source.manifest, source.media_type, what=f"manifest of {source.description}")

    # Gather: where the tag points now, and whether that image is complete.
    current = store.lookup(reference)
    previous = current.digest if current is not None else None
    complete = False
    if previous == digest:
        with contextlib.suppress(StoreError, ManifestError):
            complete = is_complete(store, store.resolve(reference))

    # Decide.
    if complete and not force:
        result = ImportResult(reference, digest, previous, changed=False)
    elif check_mode:
        result = ImportResult(reference, digest, previous, previous != digest or not complete)

    # Act.
    else:
        result = _commit(store, reference, source, previous, force)
    result.source_digest = original if original != digest else None
    return result


def _commit(
    store: Store, reference: str, source: ImageSource, previous: str | None, force: bool
) -> ImportResult:
    manifest = parse_manifest(source.manifest, source.media_type)
    result = ImportResult(reference, source.digest, previous, changed=False)
    try:
        with store.lock(shared=True):
            store.init()
            config_data = _read_blob(source, manifest.config)
            image = build_stored_image(reference, source.manifest, source.media_type, config_data)
            store.ingest_bytes(config_data, manifest.config.digest, added=result.blobs_added)
            for desc in manifest.layers:
                if force and store.has_blob(desc.digest):
                    _drop_if_corrupt(store, desc)
                if not store.has_blob(desc.digest):
                    with source.open_blob(desc) as handle:
                        if store.ingest_blob(handle, desc.digest, desc.size):
                            result.blobs_added.append(desc.digest)
            for layer in image.layers:
                if store.ensure_layer(layer, verify=True, image=reference):
                    result.layers_unpacked.append(layer.chain_id)
            descriptor = store.put_manifest(
                source.manifest, source.media_type, added=result.blobs_added
            )
            result.previous_digest = store.tag(reference, descriptor)
    except BaseException:
        created = result.blobs_added + result.layers_unpacked
        if created:
            # Rollback must not hide the error that caused it; gc() re-checks references.
            with contextlib.suppress(Exception):
                store.gc(only=created)
        raise
    result.changed = (
        result.previous_digest != source.digest
        or bool(result.blobs_added)
        or bool(result.layers_unpacked)
    )
    result.image = image
    return result


def _read_blob(source: ImageSource, desc: Descriptor) -> bytes:
    with source.open_blob(desc) as handle:
        data = handle.read(min(desc.size, _MAX_DOCUMENT) + 1)
    if len(data) != desc.size or sha256_digest(data) != desc.digest:
        raise BlobError(
            f"{source.description}: blob {desc.digest} is corrupted or truncated (content "
            f"digest {sha256_digest(data)}, {len(data)} bytes, {desc.size} declared)"
        )
    return data


def _drop_if_corrupt(store: Store, desc: Descriptor) -> None:
    """With ``force``: re-hash a stored blob and drop it when it no longer matches."""
    hasher = hashlib.sha256()
    path = store.blob_path(desc.digest)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            hasher.update(chunk)
    if "sha256:" + hasher.hexdigest() != desc.digest:
        with store.lock(f"blob-{digest_hex(desc.digest)}"):
            path.unlink(missing_ok=True)
