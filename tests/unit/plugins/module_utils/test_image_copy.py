"""image_copy: chunk plan, host inventory, staging, commit, resume, and corrupted transfers.

The controller's and the host's side run in one process here: a chunk "sent" is a file
written into the host store's staging directory, which is what ``put_file`` does.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.image_copy import (
    BlobRef,
    CopyError,
    HostInventory,
    blob_refs,
    chunk_name,
    chunk_spans,
    commit_copy,
    parse_chunk_size,
    plan_copy,
    prepare_staging,
    staging_dir,
    take_inventory,
)
from ansible_collections.lapis.layers.plugins.module_utils.image_copy_source import (
    ChunkFiles,
    ControllerImage,
    detect_kind,
    open_controller_image,
    resolve_kind,
)
from ansible_collections.lapis.layers.plugins.module_utils.image_import import SourceError
from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    REF_NAME,
    Descriptor,
    build_oci_manifest,
    canonical_json,
    sha256_digest,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import BlobError, Store

CHUNK = 4096
NAME = "localhost/fleet/app:1"


def _layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _blob(layout: Path, data: bytes) -> str:
    digest = sha256_digest(data)
    path = layout / "blobs" / "sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def make_layout(layout: Path, layers: list[dict[str, bytes]], tag: str = "1") -> str:
    """An OCI layout with gzip layers; returns the manifest digest."""
    tars = [_layer(files) for files in layers]
    blobs = [gzip.compress(t, mtime=0) for t in tars]
    diff_ids = [sha256_digest(t) for t in tars]
    config = canonical_json({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}})  # fmt: skip
    config_desc = Descriptor(OCI_CONFIG, _blob(layout, config), len(config))
    layer_descs = [Descriptor(OCI_LAYER_GZIP, _blob(layout, b), len(b)) for b in blobs]
    manifest = build_oci_manifest(config_desc, layer_descs)
    digest = _blob(layout, manifest)
    entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
             "size": len(manifest), "annotations": {REF_NAME: tag}}  # fmt: skip
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return digest


BASE = {"bin/tool": os.urandom(3 * CHUNK + 100), "etc/os-release": b"ID=test\n"}
APP = {"srv/app": os.urandom(CHUNK // 2)}


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    path = tmp_path / "layout"
    make_layout(path, [BASE])
    return path


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "host-store")


def open_image(path: Path) -> ControllerImage:
    return open_controller_image("auto", str(path), None, path, "/nonexistent")


def send(image: ControllerImage, store: Store, plan_send: list[tuple[BlobRef, list[int]]]) -> int:
    """Stand-in for put_file: write each planned chunk into the host's staging directory."""
    sent = 0
    for blob, indexes in plan_send:
        files = ChunkFiles(image, image.descriptor(blob.digest), None)
        spans = chunk_spans(blob.size, CHUNK)
        for index in indexes:
            with files.chunk(*spans[index]) as local:
                data = Path(local).read_bytes()
            (staging_dir(store, blob.digest) / chunk_name(index, CHUNK)).write_bytes(data)
            sent += len(data)
    return sent


def copy(image: ControllerImage, store: Store, name: str = NAME) -> tuple[int, HostInventory]:
    """The three steps of the action plugin; returns bytes sent and the inventory."""
    inventory = take_inventory(store, name, image.digest, image.refs, CHUNK)
    plan = plan_copy(image.refs, inventory, image.digest, CHUNK)
    if not plan.changed:
        return 0, inventory
    prepare_staging(store, plan.digests_to_send, None)
    sent = send(image, store, plan.send)
    commit_copy(store, name, image.manifest, image.media_type, image.refs, chunk_size=CHUNK)
    return sent, inventory


@pytest.mark.parametrize(
    ("text", "size"),
    [("4096", 4096), ("32m", 32 << 20), ("512k", 512 << 10), ("1g", 1 << 30), ("8MiB", 8 << 20)],
)
def test_chunk_size_accepts_bytes_and_binary_suffixes(text: str, size: int) -> None:
    assert parse_chunk_size(text) == size


@pytest.mark.parametrize("text", ["", "12x", "-1", "100", "1.5m"])
def test_chunk_size_refuses_garbage_and_tiny_chunks(text: str) -> None:
    with pytest.raises(CopyError):
        parse_chunk_size(text)


@pytest.mark.parametrize(
    ("size", "spans"),
    [
        (0, [(0, 0)]),
        (100, [(0, 100)]),
        (CHUNK, [(0, CHUNK)]),
        (CHUNK + 1, [(0, CHUNK), (CHUNK, 1)]),
        (2 * CHUNK, [(0, CHUNK), (CHUNK, CHUNK)]),
    ],
)
def test_chunk_spans_cover_the_blob_exactly(size: int, spans: list[tuple[int, int]]) -> None:
    assert chunk_spans(size, CHUNK) == spans


def test_blob_refs_check_digests_and_sizes() -> None:
    digest = "sha256:" + "a" * 64
    good = {"digest": digest, "size": 3}
    assert blob_refs([good, good]) == [BlobRef(digest, 3)]
    with pytest.raises(CopyError):
        blob_refs([{"digest": digest, "size": -1}])
    with pytest.raises(ValueError, match="digest"):
        blob_refs([{"digest": "sha256:../../etc", "size": 1}])


def test_plan_skips_present_blobs_and_resumes_staged_chunks() -> None:
    a, b, c = (BlobRef(f"sha256:{x * 64}", 3 * CHUNK) for x in "abc")
    inventory = HostInventory(present=[a.digest], staged={b.digest: [0, 2]})
    plan = plan_copy([a, b, c], inventory, "sha256:" + "f" * 64, CHUNK)
    assert plan.skipped == [a.digest]
    assert plan.send == [(b, [1]), (c, [0, 1, 2])]
    assert plan.resumed == [b.digest]
    assert plan.bytes_resumed == 2 * CHUNK
    assert plan.bytes_to_send == 4 * CHUNK
    assert plan.changed


def test_plan_for_a_complete_image_changes_nothing() -> None:
    a = BlobRef("sha256:" + "a" * 64, 10)
    digest = "sha256:" + "f" * 64
    inventory = HostInventory(present=[a.digest], current_digest=digest, complete=True)
    plan = plan_copy([a], inventory, digest, CHUNK)
    assert not plan.changed
    assert plan.bytes_to_send == 0


def test_copy_imports_the_image_and_a_second_copy_sends_nothing(layout: Path, store: Store) -> None:
    image = open_image(layout)
    sent, _inventory = copy(image, store)
    assert sent == sum(ref.size for ref in image.refs)
    stored = store.resolve(NAME)
    assert stored.manifest_digest == image.digest
    assert all(store.has_layer(layer.chain_id) for layer in stored.layers)
    assert not any(staging_dir(store, ref.digest).exists() for ref in image.refs)
    again, inventory = copy(image, store)
    assert again == 0
    assert inventory.complete


def test_a_second_release_sends_only_its_new_layer(tmp_path: Path, store: Store) -> None:
    first, second = tmp_path / "r1", tmp_path / "r2"
    make_layout(first, [BASE])
    make_layout(second, [BASE, APP])
    copy(open_image(first), store)
    image = open_image(second)
    sent, inventory = copy(image, store, "localhost/fleet/app:2")
    new_layer = image.blobs[-1]
    assert sorted(inventory.present) == [image.blobs[1].digest]  # the base layer
    assert sent == new_layer.size + image.blobs[0].size  # the new layer and the new config


def test_an_interrupted_copy_resumes_at_the_first_missing_chunk(layout: Path, store: Store) -> None:
    image = open_image(layout)
    base = max(image.refs, key=lambda ref: ref.size)
    assert len(chunk_spans(base.size, CHUNK)) > 1
    prepare_staging(store, [base.digest], None)
    send(image, store, [(base, [0])])
    folder = staging_dir(store, base.digest)
    partial = folder / chunk_name(1, CHUNK)
    partial.write_bytes(b"cut short")  # a chunk whose transfer broke off

    inventory = take_inventory(store, NAME, image.digest, image.refs, CHUNK)
    assert inventory.staged == {base.digest: [0]}
    plan = plan_copy(image.refs, inventory, image.digest, CHUNK)
    assert dict(plan.send)[base] == list(range(1, len(chunk_spans(base.size, CHUNK))))
    assert plan.bytes_resumed == CHUNK
    sent, _inventory = copy(image, store)
    assert sent == sum(ref.size for ref in image.refs) - CHUNK
    assert store.resolve(NAME).manifest_digest == image.digest


def test_tampered_chunk_is_refused_and_dropped_so_the_next_run_resends(
    layout: Path, store: Store
) -> None:
    image = open_image(layout)
    inventory = take_inventory(store, NAME, image.digest, image.refs, CHUNK)
    plan = plan_copy(image.refs, inventory, image.digest, CHUNK)
    prepare_staging(store, plan.digests_to_send, None)
    send(image, store, plan.send)
    base = max(image.refs, key=lambda ref: ref.size)
    chunk = staging_dir(store, base.digest) / chunk_name(0, CHUNK)
    chunk.write_bytes(b"\0" * CHUNK)  # same size, other bytes

    with pytest.raises(BlobError, match="arrived corrupted"):
        commit_copy(store, NAME, image.manifest, image.media_type, image.refs, chunk_size=CHUNK)
    assert not staging_dir(store, base.digest).exists()
    assert store.lookup(NAME) is None
    assert not store.present_blobs()  # the rollback removed the blobs this commit added
    sent, _inventory = copy(image, store)
    assert sent == sum(ref.size for ref in image.refs)


def test_commit_without_every_chunk_names_the_missing_one(layout: Path, store: Store) -> None:
    image = open_image(layout)
    prepare_staging(store, [ref.digest for ref in image.refs], None)
    with pytest.raises(CopyError, match=r"chunk 0 .* incomplete \(missing\)"):
        commit_copy(store, NAME, image.manifest, image.media_type, image.refs, chunk_size=CHUNK)


def test_check_mode_inventory_writes_nothing(layout: Path, store: Store) -> None:
    image = open_image(layout)
    inventory = take_inventory(store, NAME, image.digest, image.refs, CHUNK)
    assert inventory.present == [] and inventory.current_digest is None
    assert not store.root.exists()


def test_sources_are_detected_from_what_is_on_the_controller(layout: Path, tmp_path: Path) -> None:
    archive = tmp_path / "layout.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(layout, arcname=".")
    docker = tmp_path / "docker.tar"
    with tarfile.open(docker, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"[]"))
    assert detect_kind(layout) == "oci"
    assert detect_kind(archive) == "oci-archive"
    assert detect_kind(docker) == "docker-archive"
    assert detect_kind(tmp_path / "nothing") is None
    assert resolve_kind("auto", "busybox:1.36", None) == "store"
    with pytest.raises(SourceError, match="neither"):
        resolve_kind("auto", str(tmp_path), tmp_path)


def test_an_oci_archive_sends_the_same_blobs_as_its_layout(layout: Path, tmp_path: Path) -> None:
    archive = tmp_path / "layout.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(layout, arcname=".")
    image = open_controller_image("auto", str(archive), None, archive, "/nonexistent")
    store = Store(tmp_path / "from-archive")
    try:
        sent, _inventory = copy(image, store)
    finally:
        image.close()
    assert sent == sum(ref.size for ref in image.refs)
    assert store.resolve(NAME).manifest_digest == open_image(layout).digest
