# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Write an image of the store to a path: an OCI layout, an OCI archive or a docker-archive.

``export_image`` follows gather, decide, act like the registry transfers: it reads which
manifest the destination already names (the layout's or archive's ``index.json``, or a
docker-archive's ``manifest.json``), changes nothing when that is the image, and
otherwise writes. A layout gets the missing blobs (copied beside ``blobs/`` and renamed
into place) and then its ``index.json`` entry; an archive is written whole to a temporary
file beside ``path`` and renamed over it, so a reader never sees half an archive.

A docker-archive keeps the store's config and layer blobs as they are (compressed layers
included, which ``docker load`` and ``skopeo`` read) under ``blobs/sha256/`` as Docker 25
writes them, with a ``manifest.json`` naming the config, the ``RepoTags`` and the layers.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import (
    INDEX_TYPES,
    OCI_LAYOUT_VERSION,
    REF_NAME,
    Manifest,
    digest_hex,
    parse_manifest,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_refs import parse_image_ref
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store, StoreError
from ansible_collections.lapis.layers.plugins.module_utils.registry_layout import OciLayout

EXPORT_FORMATS = ("oci", "oci-archive", "docker-archive")
_MAX_DOCUMENT = 8 << 20


class ExportError(Exception):
    """A destination that cannot be read or written, or an image that cannot be exported."""


@dataclass
class Export:
    """What an export did (or, in check mode, would do)."""

    changed: bool
    path: str
    format: str
    ref_name: str
    digest: str
    previous_digest: str | None = None
    blobs: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)


def export_image(
    store: Store,
    name: str,
    path: str,
    fmt: str,
    *,
    ref_name: str | None = None,
    check_mode: bool = False,
) -> Export:
    """Write the image ``name`` of ``store`` to ``path`` as ``fmt`` (see the module docstring).

    ``ref_name`` is the name the destination gives it (the layout's
    ``org.opencontainers.image.ref.name``, the docker-archive's ``RepoTags`` entry);
    default is the normalised ``name``.
    """
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    local = store.lookup(name)
    if local is None:
        raise StoreError(f"image {name} is not in store {store.root}; pull or import it first")
    if local.media_type in INDEX_TYPES:
        raise ExportError(f"image {name} is an image index; export a single-platform image")
    label = ref_name or str(parse_image_ref(name))
    manifest = parse_manifest(store.read_blob(local.digest), local.media_type)
    blobs = [manifest.config.digest, *(layer.digest for layer in manifest.layers)]
    missing = [d for d in [local.digest, *blobs] if not store.has_blob(d)]
    if missing:
        raise StoreError(f"image {name} in store {store.root} lacks blobs {', '.join(missing)}")

    # Gather: which manifest the destination names now.
    dest = Path(path)
    previous = _current_digest(dest, fmt, label)

    # Decide.
    result = Export(False, str(dest), fmt, label, local.digest, previous, blobs=blobs)
    if previous == local.digest and _blobs_complete(dest, fmt, blobs):
        return result
    result.changed = True
    result.actions = [f"write {name} ({local.digest}) to {fmt} {dest} as {label}"]
    if check_mode:
        return result

    # Act (under the shared store lock: garbage collection keeps the blobs meanwhile).
    descriptor = {"mediaType": local.media_type, "digest": local.digest, "size": local.size}
    with store.lock(shared=True):
        if fmt == "oci":
            _write_layout(store, OciLayout(dest), [local.digest, *blobs], label, descriptor)
        elif fmt == "oci-archive":
            _write_archive(dest, _layout_members(store, [local.digest, *blobs], label, descriptor))
        else:
            _write_archive(dest, _docker_members(store, manifest, label, local.digest))
    return result


# -- gather ----------------------------------------------------------------------------


def _current_digest(dest: Path, fmt: str, label: str) -> str | None:
    """The manifest digest ``label`` names at ``dest`` now (None: absent or unreadable)."""
    if fmt == "oci":
        entry = OciLayout(dest).lookup(label) if (dest / "index.json").is_file() else None
        return str(entry["digest"]) if entry else None
    if not dest.exists():
        return None
    if not dest.is_file():
        raise ExportError(f"{dest} exists and is not a file; a {fmt} is written as one file")
    try:
        with tarfile.open(dest, "r:") as tar:
            if fmt == "oci-archive":
                index = _member_json(tar, "index.json")
                for entry in index.get("manifests") or []:
                    if (entry.get("annotations") or {}).get(REF_NAME) == label:
                        return str(entry.get("digest"))
                return None
            return _docker_archive_digest(tar, label)
    except (tarfile.TarError, OSError, ValueError, KeyError):
        return None


def _member_json(tar: tarfile.TarFile, name: str) -> dict[str, Any]:
    handle = tar.extractfile(name)
    if handle is None:
        raise KeyError(name)
    data = json.loads(handle.read(_MAX_DOCUMENT))
    return data if isinstance(data, dict) else {"list": data}


def _docker_archive_digest(tar: tarfile.TarFile, label: str) -> str | None:
    """A docker-archive has no manifest blob: a ``lapis-manifest.json`` member records ours."""
    listing = _member_json(tar, "manifest.json").get("list") or []
    if not any(label in (image.get("RepoTags") or []) for image in listing):
        return None
    return str(_member_json(tar, "lapis-manifest.json").get("digest"))


def _blobs_complete(dest: Path, fmt: str, blobs: list[str]) -> bool:
    """Archives are written whole; a layout may have lost blobs since."""
    if fmt != "oci":
        return True
    layout = OciLayout(dest)
    return all(layout.has_blob(d) for d in blobs)


# -- act -------------------------------------------------------------------------------


def _write_layout(
    store: Store, layout: OciLayout, digests: list[str], label: str, descriptor: dict[str, Any]
) -> None:
    layout.ensure()
    for digest in digests:
        if layout.has_blob(digest):
            continue
        temp = layout.temp_path()
        try:
            shutil.copyfile(store.blob_path(digest), temp)
            layout.commit_blob(digest, temp)
        finally:
            temp.unlink(missing_ok=True)
    layout.tag(label, descriptor)


def _json_member(name: str, doc: Any) -> tuple[str, bytes | Path]:
    return name, json.dumps(doc, separators=(",", ":")).encode()


def _layout_members(
    store: Store, digests: list[str], label: str, descriptor: dict[str, Any]
) -> list[tuple[str, bytes | Path]]:
    index = {
        "schemaVersion": 2,
        "manifests": [{**descriptor, "annotations": {REF_NAME: label}}],
    }
    members: list[tuple[str, bytes | Path]] = [
        _json_member("oci-layout", {"imageLayoutVersion": OCI_LAYOUT_VERSION}),
        _json_member("index.json", index),
    ]
    for digest in dict.fromkeys(digests):
        members.append((f"blobs/sha256/{digest_hex(digest)}", store.blob_path(digest)))
    return members


def _docker_members(
    store: Store, manifest: Manifest, label: str, digest: str
) -> list[tuple[str, bytes | Path]]:
    config = f"blobs/sha256/{digest_hex(manifest.config.digest)}"
    layers = [f"blobs/sha256/{digest_hex(layer.digest)}" for layer in manifest.layers]
    listing = [{"Config": config, "RepoTags": [label], "Layers": layers}]
    members: list[tuple[str, bytes | Path]] = [
        _json_member("manifest.json", listing),
        _json_member("lapis-manifest.json", {"digest": digest}),
        (config, store.blob_path(manifest.config.digest)),
    ]
    for layer, member in zip(manifest.layers, layers, strict=True):
        members.append((member, store.blob_path(layer.digest)))
    return list(dict(members).items())


def _write_archive(dest: Path, members: list[tuple[str, bytes | Path]]) -> None:
    """Write a tar of ``members`` beside ``dest`` and rename it over ``dest``."""
    if not dest.parent.is_dir():
        raise ExportError(f"directory {dest.parent} for {dest.name} does not exist")
    handle, name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    temp = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for dirname in ("blobs", "blobs/sha256"):
                    info = tarfile.TarInfo(dirname)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                for member, content in members:
                    _add_member(tar, member, content)
            out.flush()
            os.fsync(out.fileno())
        temp.chmod(0o644)
        temp.replace(dest)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _add_member(tar: tarfile.TarFile, name: str, content: bytes | Path) -> None:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    if isinstance(content, bytes):
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
        return
    info.size = content.stat().st_size
    with open(content, "rb") as handle:
        tar.addfile(info, handle)
