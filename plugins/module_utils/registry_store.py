# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The registry client wired to the image store: pull into it, push from it.

``pull_to_store`` and ``push_from_store`` follow gather, decide, act: they read
what the store and the registry hold, decide whether anything changes (and stop
there in check mode), then transfer. Both hold the store lock shared while they
work, so garbage collection never removes a blob under them. The store records
the platform manifest of a pulled image (not the registry's index): it is the
one whose blobs are present. Unpacking layers is the caller's step
(``Store.ensure_layers``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.lapis.layers.plugins.module_utils.image_import import is_complete
from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import (
    Descriptor,
    ManifestError,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import (
    Store,
    StoreError,
    build_stored_image,
)
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

# The options of the lapis.layers.registry doc fragment, for a module's argument_spec.
REGISTRY_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "username": {"type": "str"},
    "password": {"type": "str", "no_log": True},
    "auth_file": {"type": "path"},
    "ca_path": {"type": "path"},
    "insecure_registries": {"type": "list", "elements": "str", "default": []},
    "retries": {"type": "int", "default": 3},
    "parallel": {"type": "int", "default": 4},
}


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
        }


def _complete(store: Store, reference: str, unpack: bool) -> bool:
    """Whether the image tagged ``reference`` has all its blobs (and layers, with ``unpack``)."""
    try:
        image = store.resolve(reference)
    except (StoreError, ManifestError):
        return False
    if unpack:
        return is_complete(store, image)
    digests = [image.manifest_digest, image.config_digest] + [x.digest for x in image.layers]
    return all(store.has_blob(d) for d in digests)


def pull_to_store(
    store: Store,
    name: str,
    options: RegistryOptions,
    *,
    pull: str = "missing",
    platform: str | None = None,
    check_mode: bool = False,
    unpack: bool = True,
) -> Transfer:
    """Make ``name`` present in ``store`` from its registry.

    ``pull="missing"`` leaves a complete image the store already has alone (no network);
    ``pull="always"`` re-resolves the tag and changes only when the digest moved (or the
    image was incomplete). With ``unpack`` the layers are unpacked into the layer cache
    and checked against the config's diff_ids before the tag is written.
    """
    if pull not in PULL_POLICIES:
        raise ValueError(f"pull must be one of {', '.join(PULL_POLICIES)}, not {pull!r}")
    ref = parse_reference(name)
    wanted_platform = parse_platform(platform) if platform else None
    reference = str(ref)

    # Gather: the tag in the store, then (unless that settles it) the registry's manifest.
    current = store.lookup(reference)
    previous = current.digest if current is not None else None
    if previous and (pull == "missing" or ref.digest) and _complete(store, reference, unpack):
        return Transfer(False, reference, previous, previous)
    client = RegistryClient(options)
    try:
        manifest, index, plat = client.resolve(ref, wanted_platform)
        config, layers = client.manifest_blobs(ref, manifest)
        digests = list(dict.fromkeys([config.digest, *(d.digest for d in layers)]))
        missing = [d for d in digests if not store.has_blob(d)]

        # Decide.
        result = Transfer(False, reference, manifest.digest, previous, platform=plat)
        result.index_digest = index.digest if index else None
        if previous == manifest.digest and _complete(store, reference, unpack):
            return result
        result.changed = True
        result.blobs = {d: ("fetch" if d in missing else "present") for d in digests}
        result.actions = [f"pull {ref.name}@{manifest.digest}", f"tag {reference}"]
        if check_mode:
            return result

        # Act.
        started = time.monotonic()
        _act_pull(store, client, ref, (manifest, index, plat), result, unpack=unpack)
        result.seconds = time.monotonic() - started
        return result
    finally:
        client.close()


def _act_pull(
    store: Store,
    client: RegistryClient,
    ref: RegistryRef,
    resolved: tuple[Manifest, Manifest | None, str],
    result: Transfer,
    *,
    unpack: bool,
) -> None:
    """Fetch, unpack and tag; a failure removes what this run added (``gc(only=...)``)."""
    manifest, index, plat = resolved
    docs = [d.digest for d in (manifest, index) if d is not None and not store.has_blob(d.digest)]
    created: list[str] = []
    try:
        store.init()
        with store.lock(shared=True):
            pulled = client.pull_manifest(ref, StoreSink(store), manifest, index, plat)
            created += pulled.fetched + docs
            result.blobs_added = pulled.fetched + docs
            config = store.read_blob(str(manifest.json()["config"]["digest"]))
            image = build_stored_image(result.reference, manifest.raw, manifest.media_type, config)
            for layer in image.layers if unpack else ():
                if store.ensure_layer(layer, verify=True, image=result.reference):
                    result.layers_unpacked.append(layer.chain_id)
                    created.append(layer.chain_id)
            desc = store.put_manifest(manifest.raw, manifest.media_type)
            store.tag(result.reference, desc)
    except BaseException:
        if created:
            # The rollback must not hide the error; gc() re-checks what is referenced.
            with contextlib.suppress(Exception):
                store.gc(only=created)
        raise
    result.blobs = {d: ("fetched" if d in pulled.fetched else "present") for d in result.blobs}
    result.bytes, result.resumed = pulled.bytes_fetched, pulled.resumed


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
    """``lapis.layers.image`` with ``source: registry``: its result dict (and diff).

    Reads ``pull``, ``platform`` and the registry options (`REGISTRY_ARGUMENT_SPEC`)
    from the module's ``params``.
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
        "blobs_added": done.blobs_added,
        "layers_unpacked": done.layers_unpacked,
        "index_digest": done.index_digest,
        "platform": done.platform,
        "diff": {
            "before": {"reference": done.reference, "manifest_digest": done.previous_digest},
            "after": {"reference": done.reference, "manifest_digest": done.digest},
        },
    }
