# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Copying an image from the controller into a host's store, sending only missing blobs.

The action plugin ``lapis.layers.image_copy`` drives three steps; this file holds the
host's side of each and the plan both sides share:

1. inventory (host, :func:`take_inventory`): the controller names the image's blobs
   (digest and size); the host says which its store holds, which chunks of the others an
   earlier, interrupted copy already staged, and where the tag points now.
2. transfer (controller, after :func:`plan_copy`): only the missing chunks are sent, one
   file per chunk, into the staging directory ``<store>/incoming/<blob hex>/``. A chunk
   file whose size is right counts as staged, so a copy cut short resumes at the first
   missing chunk.
3. commit (host, :func:`commit_copy`): each staged blob is assembled, checked against its
   size and digest and moved into ``blobs/``; then ``image_import.import_image`` checks
   every layer against the config's diff_ids, unpacks it and only then writes the tag.
   A failure removes what this commit added; a corrupted staged blob is dropped so that
   the next run sends it again.

Staging lives beside ``tmp/`` rather than in it because the store's garbage collection
empties ``tmp/``, which would throw away the chunks a resumed copy needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.lapis.layers.plugins.module_utils.image_import import (
    blobs_in_store_source,
    import_image,
    is_complete,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import (
    ManifestError,
    check_digest,
    digest_hex,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import (
    BlobError,
    Store,
    StoreError,
)

DEFAULT_CHUNK_SIZE = 32 << 20
MIN_CHUNK_SIZE = 4096
INCOMING = "incoming"
_READ = 1 << 20
_SIZE = re.compile(r"(\d+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)


class CopyError(Exception):
    """A copy that cannot go on: a chunk missing on the host, a bad request."""


@dataclass(frozen=True)
class BlobRef:
    """One blob of the image being copied: digest and size."""

    digest: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size}


def blob_refs(items: Iterable[dict[str, Any]]) -> list[BlobRef]:
    """``BlobRef`` objects from the module's ``blobs`` option (checked, duplicates dropped)."""
    found: dict[str, BlobRef] = {}
    for item in items:
        digest = check_digest(item.get("digest"), "blob")
        size = item.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise CopyError(f"blob {digest}: size {size!r} is not a non-negative integer")
        found.setdefault(digest, BlobRef(digest, size))
    return list(found.values())


def parse_chunk_size(text: str | int) -> int:
    """Bytes from ``33554432``, ``"32m"``, ``"512k"`` or ``"1g"`` (binary multiples)."""
    match = _SIZE.fullmatch(str(text).strip())
    if not match:
        raise CopyError(f"chunk size {text!r} is not a size: use bytes or a number with k, m or g")
    size = int(match.group(1)) * 1024 ** " kmg".index(match.group(2).lower() or " ")
    if size < MIN_CHUNK_SIZE:
        raise CopyError(f"chunk size {text!r} is below the minimum of {MIN_CHUNK_SIZE} bytes")
    return size


def chunk_spans(size: int, chunk_size: int) -> list[tuple[int, int]]:
    """(offset, length) of each chunk of a blob of ``size`` bytes; an empty blob has one."""
    if chunk_size < MIN_CHUNK_SIZE:
        raise CopyError(f"chunk size {chunk_size} is below the minimum of {MIN_CHUNK_SIZE} bytes")
    if size == 0:
        return [(0, 0)]
    return [(offset, min(chunk_size, size - offset)) for offset in range(0, size, chunk_size)]


def chunk_name(index: int, chunk_size: int) -> str:
    """File name of chunk ``index``; the chunk size is part of it, so sizes never mix."""
    return f"c{chunk_size}-{index:06d}"


def staging_root(store: Store) -> Path:
    """``<store>/incoming``: one directory per blob being received."""
    return store.root / INCOMING


def staging_dir(store: Store, digest: str) -> Path:
    """``<store>/incoming/<hex>``: the chunks of one blob."""
    return staging_root(store) / digest_hex(digest)


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def staged_chunks(store: Store, blob: BlobRef, chunk_size: int) -> list[int]:
    """Indexes of the chunks of ``blob`` already staged in full (right size)."""
    folder = staging_dir(store, blob.digest)
    if not folder.is_dir():
        return []
    return [
        index
        for index, (_offset, length) in enumerate(chunk_spans(blob.size, chunk_size))
        if _file_size(folder / chunk_name(index, chunk_size)) == length
    ]


# -- step 1: inventory -----------------------------------------------------------------------


@dataclass
class HostInventory:
    """What a host holds of an image: blobs present, chunks staged, where the tag points."""

    present: list[str] = field(default_factory=list)
    staged: dict[str, list[int]] = field(default_factory=dict)
    current_digest: str | None = None
    complete: bool = False
    staging: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "present": list(self.present),
            "staged": {k: list(v) for k, v in self.staged.items()},
            "current_digest": self.current_digest,
            "complete": self.complete,
            "staging": self.staging,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> HostInventory:
        return cls(
            present=[str(d) for d in doc.get("present") or []],
            staged={str(k): [int(i) for i in v] for k, v in (doc.get("staged") or {}).items()},
            current_digest=doc.get("current_digest"),
            complete=bool(doc.get("complete")),
            staging=str(doc.get("staging") or ""),
        )


def take_inventory(
    store: Store,
    reference: str,
    manifest_digest: str,
    blobs: list[BlobRef],
    chunk_size: int,
) -> HostInventory:
    """Gather what the host has of the image (read-only)."""
    inventory = HostInventory(staging=str(staging_root(store)))
    current = store.lookup(reference)
    inventory.current_digest = current.digest if current is not None else None
    if inventory.current_digest == manifest_digest:
        with contextlib.suppress(StoreError, ManifestError):
            inventory.complete = is_complete(store, store.resolve(reference))
    for blob in blobs:
        if store.has_blob(blob.digest):
            inventory.present.append(blob.digest)
            continue
        chunks = staged_chunks(store, blob, chunk_size)
        if chunks:
            inventory.staged[blob.digest] = chunks
    return inventory


def prepare_staging(store: Store, digests: Iterable[str], owner: tuple[int, int] | None) -> None:
    """Create the staging directories the controller will write to.

    ``owner`` (uid, gid) is the login user when the task escalates privileges: the files
    are sent as that user, the commit runs as root and checks every byte anyway.
    """
    store.init()
    root = staging_root(store)
    root.mkdir(mode=0o711, exist_ok=True)
    for digest in digests:
        folder = staging_dir(store, digest)
        folder.mkdir(mode=0o700, exist_ok=True)
        if owner is not None:
            os.chown(folder, *owner)


# -- decide (controller) ---------------------------------------------------------------------


@dataclass
class CopyPlan:
    """What the controller sends: chunk indexes per blob, and what it skips."""

    send: list[tuple[BlobRef, list[int]]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    bytes_to_send: int = 0
    bytes_resumed: int = 0
    changed: bool = False

    @property
    def digests_to_send(self) -> list[str]:
        return [blob.digest for blob, _chunks in self.send]


def plan_copy(
    blobs: list[BlobRef],
    inventory: HostInventory,
    manifest_digest: str,
    chunk_size: int,
) -> CopyPlan:
    """Decide which chunks to send: none of a present blob, only the unstaged of the others."""
    plan = CopyPlan()
    present = set(inventory.present)
    for blob in blobs:
        if blob.digest in present:
            plan.skipped.append(blob.digest)
            continue
        staged = set(inventory.staged.get(blob.digest, []))
        spans = chunk_spans(blob.size, chunk_size)
        wanted = [i for i in range(len(spans)) if i not in staged]
        if staged:
            plan.resumed.append(blob.digest)
            plan.bytes_resumed += sum(spans[i][1] for i in staged if i < len(spans))
        plan.bytes_to_send += sum(spans[i][1] for i in wanted)
        plan.send.append((blob, wanted))
    plan.changed = bool(plan.send) or not (
        inventory.complete and inventory.current_digest == manifest_digest
    )
    return plan


# -- step 3: commit --------------------------------------------------------------------------


def _chunk_paths(store: Store, blob: BlobRef, chunk_size: int) -> list[Path]:
    folder = staging_dir(store, blob.digest)
    paths = []
    for index, (_offset, length) in enumerate(chunk_spans(blob.size, chunk_size)):
        path = folder / chunk_name(index, chunk_size)
        found = _file_size(path)
        if found != length:
            state = "missing" if found is None else f"{found} of {length} bytes"
            raise CopyError(
                f"blob {blob.digest}: chunk {index} in {folder} is incomplete ({state}); "
                "run the copy again to send it"
            )
        paths.append(path)
    return paths


def _pieces(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while True:
            piece = handle.read(_READ)
            if not piece:
                return
            yield piece


def _assemble(paths: list[Path], target: Path) -> str:
    """Concatenate chunk files into ``target`` (or hash the single chunk); return the digest."""
    hasher = hashlib.sha256()
    if len(paths) == 1 and paths[0] == target:
        for piece in _pieces(target):
            hasher.update(piece)
        with open(target, "rb") as handle:
            os.fsync(handle.fileno())
        return "sha256:" + hasher.hexdigest()
    with open(target, "wb") as out:
        for path in paths:
            for piece in _pieces(path):
                hasher.update(piece)
                out.write(piece)
        out.flush()
        os.fsync(out.fileno())
    return "sha256:" + hasher.hexdigest()


def ingest_staged(store: Store, blob: BlobRef, chunk_size: int) -> bool:
    """Move one staged blob into the store after checking it; True when this call added it."""
    folder = staging_dir(store, blob.digest)
    if store.has_blob(blob.digest):
        shutil.rmtree(folder, ignore_errors=True)
        return False
    paths = _chunk_paths(store, blob, chunk_size)
    with store.lock(shared=True), store.lock(f"blob-{digest_hex(blob.digest)}"):
        if store.has_blob(blob.digest):
            shutil.rmtree(folder, ignore_errors=True)
            return False
        candidate = paths[0] if len(paths) == 1 else folder / "assembled"
        actual = _assemble(paths, candidate)
        size = candidate.stat().st_size
        if actual != blob.digest or size != blob.size:
            shutil.rmtree(folder, ignore_errors=True)
            raise BlobError(
                f"blob {blob.digest} arrived corrupted (content digest {actual}, {size} bytes, "
                f"{blob.size} expected); the staged copy was dropped, run the copy again"
            )
        if os.geteuid() == 0:
            os.chown(candidate, 0, 0)
        candidate.chmod(0o644)
        candidate.rename(store.blob_path(blob.digest))
    shutil.rmtree(folder, ignore_errors=True)
    return True


@dataclass
class CommitResult:
    """What the commit did on the host."""

    reference: str
    manifest_digest: str
    previous_digest: str | None
    changed: bool
    blobs_added: list[str] = field(default_factory=list)
    layers_unpacked: list[str] = field(default_factory=list)
    removed_blobs: list[str] = field(default_factory=list)
    removed_layers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "reference": self.reference,
            "manifest_digest": self.manifest_digest,
            "previous_digest": self.previous_digest,
            "blobs_added": list(self.blobs_added),
            "layers_unpacked": list(self.layers_unpacked),
            "removed_blobs": list(self.removed_blobs),
            "removed_layers": list(self.removed_layers),
        }


def commit_copy(
    store: Store,
    reference: str,
    manifest: bytes,
    media_type: str | None,
    blobs: list[BlobRef],
    *,
    chunk_size: int,
) -> CommitResult:
    """Ingest the staged blobs and import the image (diff_ids checked before the tag)."""
    added: list[str] = []
    try:
        with store.lock(shared=True):
            store.init()
            for blob in blobs:
                if ingest_staged(store, blob, chunk_size):
                    added.append(blob.digest)
            source = blobs_in_store_source(
                store, manifest, media_type, description=f"image {reference} copied to the host"
            )
            imported = import_image(store, reference, source)
    except BaseException:
        if added:
            # The rollback must not hide the error; gc() re-checks what is referenced.
            with contextlib.suppress(Exception):
                store.gc(only=added)
        raise
    result = CommitResult(
        reference=imported.reference,
        manifest_digest=imported.manifest_digest,
        previous_digest=imported.previous_digest,
        changed=imported.changed or bool(added),
        blobs_added=added + [d for d in imported.blobs_added if d not in added],
        layers_unpacked=list(imported.layers_unpacked),
    )
    if imported.previous_digest not in (None, imported.manifest_digest):
        collected = store.gc()
        result.removed_blobs, result.removed_layers = collected.blobs, collected.layers
    return result
