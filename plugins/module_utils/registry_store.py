# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The registry client wired to the image store: pull into it, push from it.

``pull_to_store`` and ``push_from_store`` follow gather, decide, act: they read
what the store and the registry hold, decide whether anything changes (and stop
there in check mode), then transfer. Both hold the store lock shared while they
work, so garbage collection never removes a blob under them. The store records
the platform manifest of a pulled image (not the registry's index): it is the
one whose blobs are present. A pull fetches the blobs, then hands them to
``image_import.import_image`` (through ``blobs_in_store_source``), so a pulled
image gets the checks of a local import: layers unpacked and matched against the
config's diff_ids before the tag is written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.lapis.layers.plugins.module_utils.image_import import (
    blobs_in_store_source,
    import_image,
    is_complete,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import (
    DOCKER_MANIFEST,
    Descriptor,
    ManifestError,
    chain_ids,
    docker_to_oci_manifest,
    parse_config,
    parse_manifest,
    sha256_digest,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store, StoreError
from ansible_collections.lapis.layers.plugins.module_utils.registry_client import (
    INDEX_TYPES,
    Manifest,
    NotFound,
    RegistryClient,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_reference import (
    RegistryRef,
    parse_platform,
    parse_reference,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_transport import (
    RegistryOptions,
)

PULL_POLICIES = ("missing", "always")


def registry_options(params: dict[str, Any]) -> RegistryOptions:
    """`RegistryOptions` from a module's parameters (see `REGISTRY_ARGUMENT_SPEC`)."""
    if bool(params.get("username")) != bool(params.get("password")):
        raise ValueError("username and password must be given together")
    retries, parallel = params.get("retries"), params.get("parallel")
    if (retries is not None and retries < 0) or (parallel is not None and parallel < 1):
        raise ValueError("retries must be 0 or more and parallel 1 or more")
    return RegistryOptions(
        username=params.get("username"),
        password=params.get("password"),
        auth_file=params.get("auth_file"),
        ca_path=params.get("ca_path"),
        insecure_registries=tuple(params.get("insecure_registries") or ()),
        retries=3 if retries is None else int(retries),
        max_workers=4 if parallel is None else int(parallel),
    )


class StoreSink:
    """The image store as the client's `BlobSink`: downloads land in ``<store>/tmp``
    and are renamed into ``blobs/`` under the store's per-blob lock."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def has_blob(self, digest: str) -> bool:
        return self.store.has_blob(digest)

    def temp_path(self) -> Path:
        handle, name = tempfile.mkstemp(prefix="pull-", dir=self.store.tmp_dir)
        os.close(handle)
        return Path(name)

    def commit_blob(self, digest: str, temp: Path) -> None:
        target = self.store.blob_path(digest)
        with self.store.lock(f"blob-{digest.split(':', 1)[1]}"):
            if target.is_file():
                temp.unlink(missing_ok=True)
                return
            with open(temp, "rb") as handle:
                os.fsync(handle.fileno())
            temp.chmod(0o644)
            temp.replace(target)


@dataclass
class Transfer:
    """What a pull or push did (or, in check mode, would do)."""

    changed: bool
    reference: str
    digest: str
    previous_digest: str | None = None
    index_digest: str | None = None
    platform: str = ""
    actions: list[str] = field(default_factory=list)
    blobs: dict[str, str] = field(default_factory=dict)
    bytes: int = 0
    resumed: int = 0
    seconds: float = 0.0
    layers_unpacked: list[str] = field(default_factory=list)
    blobs_added: list[str] = field(default_factory=list)
    source_digest: str | None = None
    fetch_seconds: float = 0.0
    import_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "reference": self.reference,
            "digest": self.digest,
            "previous_digest": self.previous_digest,
            "index_digest": self.index_digest,
            "platform": self.platform,
            "actions": self.actions,
            "blobs": self.blobs,
            "bytes": self.bytes,
            "resumed": self.resumed,
            "seconds": round(self.seconds, 3),
            "layers_unpacked": self.layers_unpacked,
            "blobs_added": self.blobs_added,
            "source_digest": self.source_digest,
            "fetch_seconds": round(self.fetch_seconds, 3),
            "import_seconds": round(self.import_seconds, 3),
        }


def _complete(store: Store, reference: str) -> bool:
    """Whether the image tagged ``reference`` has all its blobs and unpacked layers."""
    try:
        return is_complete(store, store.resolve(reference))
    except (StoreError, ManifestError):
        return False


def stored_digest(manifest: Manifest) -> str:
    """The digest the store gives ``manifest``: a Docker schema2 manifest is kept in OCI form."""
    if manifest.media_type == DOCKER_MANIFEST:
        return sha256_digest(docker_to_oci_manifest(manifest.raw))
    return manifest.digest


def pull_to_store(
    store: Store,
    name: str,
    options: RegistryOptions,
    *,
    pull: str = "missing",
    platform: str | None = None,
    check_mode: bool = False,
) -> Transfer:
    """Make ``name`` present in ``store`` from its registry (layers unpacked).

    ``pull="missing"`` leaves a complete image the store already has alone (no network);
    ``pull="always"`` re-resolves the tag and changes only when the digest moved (or the
    image was incomplete). Blobs are fetched first (digests checked, nothing committed
    unless all arrived), then imported like a local image: every layer is unpacked and
    checked against the config's diff_ids before the tag is written. A failure removes
    what this pull added. ``Transfer.digest`` is the stored manifest's digest (see
    `stored_digest`), ``Transfer.source_digest`` the registry's when they differ.
    """
    if pull not in PULL_POLICIES:
        raise ValueError(f"pull must be one of {', '.join(PULL_POLICIES)}, not {pull!r}")
    ref = parse_reference(name)
    wanted_platform = parse_platform(platform) if platform else None
    reference = str(ref)

    # Gather: the tag in the store, then (unless that settles it) the registry's manifest.
    current = store.lookup(reference)
    previous = current.digest if current is not None else None
    if previous and (pull == "missing" or ref.digest) and _complete(store, reference):
        return Transfer(False, reference, previous, previous)
    client = RegistryClient(options)
    try:
        manifest, index, plat = client.resolve(ref, wanted_platform)
        config, layers = client.manifest_blobs(ref, manifest)
        digests = list(dict.fromkeys([config.digest, *(d.digest for d in layers)]))
        digest = stored_digest(manifest)

        # Decide.
        result = Transfer(False, reference, digest, previous, platform=plat)
        result.index_digest = index.digest if index else None
        result.source_digest = manifest.digest if manifest.digest != digest else None
        if previous == digest and _complete(store, reference):
            return result
        result.changed = True
        result.blobs = {d: ("present" if store.has_blob(d) else "fetch") for d in digests}
        result.actions = [f"pull {ref.name}@{manifest.digest}", f"tag {reference}"]
        if check_mode:
            return result

        # Act.
        _act_pull(store, client, ref, (manifest, plat), result)
        return result
    finally:
        client.close()


def _act_pull(
    store: Store,
    client: RegistryClient,
    ref: RegistryRef,
    resolved: tuple[Manifest, str],
    result: Transfer,
) -> None:
    """Fetch the blobs, then import them (diff_id checks, unpacking, tag) as a local image.

    The store lock is held shared throughout, so garbage collection cannot take the fetched,
    not yet tagged blobs. A failure then removes what this pull may have added (fetched
    blobs, the stored manifest, the image's layer directories) unless something references it.
    """
    manifest, plat = resolved
    fetched: list[str] = []
    try:
        store.init()
        started = time.monotonic()
        with store.lock(shared=True):
            pulled = client.pull_manifest(
                ref, StoreSink(store), manifest, None, plat, documents=False
            )
            fetched = pulled.fetched
            result.fetch_seconds = time.monotonic() - started
            source = blobs_in_store_source(
                store, manifest.raw, manifest.media_type, f"registry {ref.name}@{manifest.digest}"
            )
            imported = import_image(store, result.reference, source)
        result.import_seconds = time.monotonic() - started - result.fetch_seconds
    except BaseException:
        # The rollback must not hide the error; gc() re-checks what is referenced. (The
        # import's own rollback cannot take the exclusive lock while this one is held.)
        with contextlib.suppress(Exception):
            store.gc(only=[*fetched, result.digest, *_chain_ids(store, manifest)])
        raise
    result.blobs = {d: ("fetched" if d in fetched else "present") for d in result.blobs}
    result.blobs_added = list(dict.fromkeys(fetched + imported.blobs_added))
    result.layers_unpacked = imported.layers_unpacked
    result.previous_digest = imported.previous_digest
    result.bytes, result.resumed = pulled.bytes_fetched, pulled.resumed


def _chain_ids(store: Store, manifest: Manifest) -> list[str]:
    """The chain ids of the layers of ``manifest``; none when its config is not readable."""
    try:
        config = parse_manifest(manifest.raw, manifest.media_type).config
        return chain_ids(parse_config(store.read_blob(config.digest)).diff_ids)
    except (StoreError, ManifestError, OSError):
        return []


def _needed_blobs(store: Store, desc: Descriptor) -> list[str]:
    """Every blob a manifest or index in the store refers to (children included)."""
    raw = store.read_blob(desc.digest)
    manifest = Manifest(raw, desc.media_type, desc.digest)
    data = manifest.json()
    if desc.media_type in INDEX_TYPES:
        found = []
        for entry in data.get("manifests") or []:
            child = Descriptor(str(entry.get("mediaType", "")), str(entry["digest"]), 0)
            found += [
                child.digest,
                *(_needed_blobs(store, child) if store.has_blob(child.digest) else []),
            ]
        return found
    return [str(data["config"]["digest"])] + [str(layer["digest"]) for layer in data["layers"]]


def push_from_store(
    store: Store,
    name: str,
    options: RegistryOptions,
    *,
    dest: str | None = None,
    mount_from: list[str] | None = None,
    chunk_size: int = 0,
    check_mode: bool = False,
) -> Transfer:
    """Send the image ``name`` from ``store`` to ``dest`` (default: the same reference)."""
    local = store.lookup(name)
    if local is None:
        raise StoreError(f"image {name} is not in store {store.root}; pull or import it first")
    ref = parse_reference(dest or name)
    if ref.digest and ref.digest != local.digest:
        raise ValueError(
            f"destination {ref} names digest {ref.digest}, the image is {local.digest}"
        )
    missing = [d for d in _needed_blobs(store, local) if not store.has_blob(d)]
    if missing:
        raise StoreError(
            f"image {name} in store {store.root} lacks blobs {', '.join(missing)} (an index whose "
            "other platforms were never pulled?); push a single-platform image instead"
        )

    client = RegistryClient(options)
    try:
        try:
            remote: str | None = client.get_manifest(ref).digest
        except NotFound:
            remote = None
        result = Transfer(False, str(ref), local.digest, remote)
        if remote == local.digest:
            return result
        result.changed = True
        result.actions = [f"push {name} ({local.digest}) to {ref}"]
        if check_mode:
            return result
        started = time.monotonic()
        manifest = Manifest(store.read_blob(local.digest), local.media_type, local.digest)
        with store.lock(shared=True):
            pushed = client.push(ref, store, manifest, mount_from or [], chunk_size)
        result.blobs, result.bytes = pushed.blobs, pushed.bytes_sent
        result.seconds = time.monotonic() - started
        return result
    finally:
        client.close()


def image_from_registry(
    store: Store, reference: str, params: dict[str, Any], check_mode: bool
) -> dict[str, Any]:
    """``lapis.layers.image`` with ``source: registry``: the result fields of the pull.

    Reads ``pull``, ``platform`` and the registry options (`REGISTRY_ARGUMENT_SPEC`)
    from the module's ``params``. The keys match those of a local import
    (``ImportResult.to_dict``) plus what went over the network.
    """
    done = pull_to_store(
        store,
        reference,
        registry_options(params),
        pull=params.get("pull") or "missing",
        platform=params.get("platform"),
        check_mode=check_mode,
    )
    return {
        "changed": done.changed,
        "reference": done.reference,
        "manifest_digest": done.digest,
        "previous_digest": done.previous_digest,
        "source_manifest_digest": done.source_digest,
        "blobs_added": done.blobs_added,
        "layers_unpacked": done.layers_unpacked,
        "index_digest": done.index_digest,
        "platform": done.platform,
        "actions": done.actions,
        "transfer": {
            "blobs": done.blobs,
            "bytes": done.bytes,
            "resumed": done.resumed,
            "fetch_seconds": round(done.fetch_seconds, 3),
            "import_seconds": round(done.import_seconds, 3),
        },
    }
