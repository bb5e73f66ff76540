# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Manifests, configs, descriptors and chain ids of OCI and Docker schema2 images.

Pure functions over bytes and dicts: ``parse_manifest`` checks an image manifest and
returns its descriptors, ``parse_config`` the parts of an image config the store needs,
``chain_ids`` computes the OCI chain ids of a list of diff_ids, and
``layer_compression`` maps a layer media type to ``none``/``gzip``/``zstd``.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

OCI_LAYOUT_VERSION = "1.0.0"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
REF_NAME = "org.opencontainers.image.ref.name"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
_LAYER_COMPRESSION = {
    OCI_LAYER: "none",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    DOCKER_LAYER: "none",
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_LAYER_FOREIGN_GZIP: "gzip",
}
OCI_LAYER_FOR = {"none": OCI_LAYER, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}
_OCI_FOR_DOCKER = {
    DOCKER_CONFIG: OCI_CONFIG,
    DOCKER_LAYER: OCI_LAYER,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    DOCKER_LAYER_FOREIGN_GZIP: "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
}
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
            "mips": "mips", "mipsel": "mipsle"}  # fmt: skip
_GO_VARIANT = {"aarch64": "v8", "arm64": "v8", "armv7l": "v7", "armv6l": "v6"}


class ManifestError(ValueError):
    """A manifest, index or config that is not a valid container image document."""


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: object, what: str) -> str:
    """Return ``digest`` if it is a sha256 digest, else raise ``ManifestError`` naming ``what``."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ManifestError(
            f"{what}: unsupported or malformed digest {digest!r} "
            "(only sha256: with 64 lowercase hex digits is supported)"
        )
    return digest


def digest_hex(digest: str) -> str:
    """The hex part of a checked sha256 digest."""
    return check_digest(digest, "digest").split(":", 1)[1]


def canonical_json(doc: Any) -> bytes:
    """Compact, key-ordered JSON bytes: what the store writes for documents it generates."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: media type, digest and size (plus annotations)."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    platform: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """The descriptor as JSON (``mediaType``, ``digest``, ``size``, ``annotations``)."""
        doc: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        doc["size"] = self.size
        if self.platform:
            doc["platform"] = self.platform
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        return doc


def parse_descriptor(doc: object, what: str) -> Descriptor:
    """Check one descriptor dict and return it as a ``Descriptor``."""
    if not isinstance(doc, dict):
        raise ManifestError(f"{what}: descriptor is not a JSON object")
    media_type = doc.get("mediaType")
    size = doc.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestError(f"{what}: descriptor has no mediaType")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{what}: descriptor size {size!r} is not a non-negative integer")
    annotations = doc.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise ManifestError(f"{what}: annotations must map strings to strings")
    plat = doc.get("platform")
    return Descriptor(
        media_type=media_type,
        digest=check_digest(doc.get("digest"), what),
        size=size,
        annotations=dict(annotations),
        platform=plat if isinstance(plat, dict) else None,
    )


def load_json(data: bytes, what: str) -> dict[str, Any]:
    """Parse a JSON object, raising ``ManifestError`` naming ``what``."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return doc


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker schema2): its media type, config and layers."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    doc: dict[str, Any] = field(compare=False, hash=False)


def manifest_media_type(doc: dict[str, Any], hint: str | None = None) -> str:
    """The media type of a manifest or index document (its own field, else ``hint``)."""
    media_type = doc.get("mediaType") or hint
    if not media_type:
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    return str(media_type)


def parse_manifest(data: bytes, hint: str | None = None, what: str = "manifest") -> Manifest:
    """Check an image manifest and return its config and layer descriptors."""
    doc = load_json(data, what)
    media_type = manifest_media_type(doc, hint)
    if media_type not in MANIFEST_TYPES:
        raise ManifestError(f"{what}: media type {media_type!r} is not an image manifest")
    if doc.get("schemaVersion") != 2:
        raise ManifestError(f"{what}: schemaVersion {doc.get('schemaVersion')!r} is not 2")
    config = parse_descriptor(doc.get("config"), f"{what} config")
    if config.media_type not in CONFIG_TYPES:
        raise ManifestError(
            f"{what}: config media type {config.media_type!r} is not a container image "
            "config (this is an artifact, not an image)"
        )
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list):
        raise ManifestError(f"{what}: layers is not a list")
    layers = tuple(parse_descriptor(d, f"{what} layer {i}") for i, d in enumerate(raw_layers))
    for i, layer in enumerate(layers):
        if layer.media_type not in _LAYER_COMPRESSION:
            raise ManifestError(
                f"{what} layer {i} ({layer.digest}): unsupported layer media type "
                f"{layer.media_type!r}"
            )
    return Manifest(media_type=media_type, config=config, layers=layers, doc=doc)


def parse_index(data: bytes, hint: str | None = None, what: str = "index") -> list[Descriptor]:
    """Check an image index (or ``index.json``) and return its manifest descriptors."""
    doc = load_json(data, what)
    if doc.get("schemaVersion") != 2:
        raise ManifestError(f"{what}: schemaVersion {doc.get('schemaVersion')!r} is not 2")
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise ManifestError(f"{what}: manifests is not a list")
    return [parse_descriptor(d, f"{what} entry {i}") for i, d in enumerate(manifests)]


def layer_compression(media_type: str) -> str:
    """``none``, ``gzip`` or ``zstd`` for a layer media type; ``ManifestError`` if unknown."""
    try:
        return _LAYER_COMPRESSION[media_type]
    except KeyError:
        raise ManifestError(f"unsupported layer media type {media_type!r}") from None


@dataclass(frozen=True)
class ImageConfig:
    """What the store reads from an image config: platform, diff_ids and the run config."""

    os: str
    architecture: str
    diff_ids: tuple[str, ...]
    config: dict[str, Any]
    doc: dict[str, Any] = field(compare=False, hash=False)


def parse_config(data: bytes, what: str = "image config") -> ImageConfig:
    """Check an image config and return its diff_ids and run configuration."""
    doc = load_json(data, what)
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ManifestError(f"{what}: rootfs.type is not 'layers'")
    raw = rootfs.get("diff_ids")
    if not isinstance(raw, list):
        raise ManifestError(f"{what}: rootfs.diff_ids is not a list")
    diff_ids = tuple(check_digest(d, f"{what} diff_id {i}") for i, d in enumerate(raw))
    run_config = doc.get("config") or {}
    if not isinstance(run_config, dict):
        raise ManifestError(f"{what}: config is not a JSON object")
    return ImageConfig(
        os=str(doc.get("os") or ""),
        architecture=str(doc.get("architecture") or ""),
        diff_ids=diff_ids,
        config=run_config,
        doc=doc,
    )


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """OCI chain ids of ``diff_ids`` (bottom first).

    ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
    """
    result: list[str] = []
    for diff_id in diff_ids:
        if not result:
            result.append(diff_id)
        else:
            result.append(sha256_digest(f"{result[-1]} {diff_id}".encode()))
    return result


def host_platform() -> tuple[str, str]:
    """This host's (os, architecture) in OCI terms, e.g. ``("linux", "amd64")``."""
    machine = platform.machine().lower()
    return "linux", _GO_ARCH.get(machine, machine)


def host_variant() -> str:
    """This host's CPU variant in OCI terms (``v6``, ``v7``, ``v8``), or ``""``."""
    return _GO_VARIANT.get(platform.machine().lower(), "")


def _variant(plat: dict[str, Any]) -> str:
    """An index entry's variant, the usual default filled in (arm64: v8, arm: v7)."""
    arch = plat.get("architecture")
    return str(plat.get("variant") or {"arm64": "v8", "arm": "v7"}.get(str(arch), ""))


def pick_platform(entries: list[Descriptor], what: str) -> Descriptor:
    """The entry of an image index for this host's platform; ``ManifestError`` when none.

    Among entries for the host's os and architecture, the one with the host's variant
    (``linux/arm/v6`` on an ARMv6 host) is preferred, else the first.
    """
    want_os, want_arch = host_platform()
    images = [e for e in entries if e.media_type in MANIFEST_TYPES]
    matching = [
        entry
        for entry in images
        if (entry.platform or {}).get("os") == want_os
        and (entry.platform or {}).get("architecture") == want_arch
    ]
    variant = host_variant()
    for entry in matching:
        if variant and _variant(entry.platform or {}) == variant:
            return entry
    if matching:
        return matching[0]
    if len(images) == 1 and not images[0].platform:
        return images[0]
    offered = sorted(
        f"{(e.platform or {}).get('os')}/{(e.platform or {}).get('architecture')}" for e in images
    )
    raise ManifestError(
        f"{what}: no manifest for platform {want_os}/{want_arch} (offered: {', '.join(offered)})"
    )


def build_oci_manifest(config: Descriptor, layers: Iterable[Descriptor]) -> bytes:
    """The bytes of an OCI image manifest for a config and layers, in canonical form."""
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_dict(),
        "layers": [layer.to_dict() for layer in layers],
    }
    return canonical_json(doc)


def docker_to_oci_manifest(data: bytes) -> bytes:
    """The OCI form of a Docker schema2 manifest: same config and layer blobs, OCI media types.

    Tools that read OCI layouts (skopeo, umoci) skip index entries whose manifest is not an
    OCI one, so the store keeps Docker schema2 images in this form. The result is canonical
    JSON, so converting the same manifest twice gives the same digest.
    """
    manifest = parse_manifest(data, DOCKER_MANIFEST)
    if manifest.media_type != DOCKER_MANIFEST:
        raise ManifestError(f"manifest {sha256_digest(data)} is not a Docker schema2 manifest")

    def convert(desc: Descriptor) -> Descriptor:
        media_type = _OCI_FOR_DOCKER.get(desc.media_type, desc.media_type)
        return Descriptor(media_type, desc.digest, desc.size, desc.annotations)

    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": convert(manifest.config).to_dict(),
        "layers": [convert(layer).to_dict() for layer in manifest.layers],
    }
    if isinstance(manifest.doc.get("annotations"), dict):
        doc["annotations"] = manifest.doc["annotations"]
    return canonical_json(doc)
