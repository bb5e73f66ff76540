"""The image store without layer unpacking: blobs, index.json, tags, locks, GC decisions."""

import io
import json
import multiprocessing

import pytest
from jsonschema import Draft4Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    REF_NAME,
    Descriptor,
    build_oci_manifest,
    canonical_json,
    chain_ids,
    sha256_digest,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import (
    BlobError,
    ImageNotFound,
    Store,
    StoreError,
    plan_gc,
    referenced_content,
)

LAYER = b"pretend this is a tar" * 10


def _config(diff_ids):
    return canonical_json({"architecture": "amd64", "os": "linux",
                           "config": {"Cmd": ["/bin/sh"]},
                           "rootfs": {"type": "layers", "diff_ids": diff_ids}})  # fmt: skip


def _put_image(store, name, layers=(LAYER,)):
    """Blobs + manifest + tag for an image whose layers are the given (uncompressed) bytes."""
    descs = []
    for data in layers:
        digest = store.ingest_bytes(data)
        descs.append(Descriptor(OCI_LAYER, digest, len(data)))
    config = _config([d.digest for d in descs])
    config_desc = Descriptor(OCI_CONFIG, store.ingest_bytes(config), len(config))
    manifest = build_oci_manifest(config_desc, descs)
    desc = store.put_manifest(manifest, OCI_MANIFEST)
    store.tag(name, desc)
    return desc


def _schema_validator(shared, schema_file):
    root = shared / "conformance" / "oci-image-spec"
    aliases = json.loads((root / "schema-aliases.json").read_text())
    aliases.pop("note")
    registry = Registry().with_resources(
        (uri, Resource.from_contents(json.loads((root / "schema" / name).read_text()),
                                     default_specification=DRAFT4))
        for name, uris in aliases.items() for uri in uris
    ).crawl()  # fmt: skip
    schema = json.loads((root / "schema" / schema_file).read_text())
    return Draft4Validator(schema, registry=registry)


def test_init_writes_a_valid_empty_layout(tmp_path, shared):
    store = Store(tmp_path / "s")
    store.init()
    index = json.loads(store.index_path.read_text())
    assert index == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    assert json.loads((store.oci_dir / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert not list(_schema_validator(shared, "image-index-schema.json").iter_errors(index))
    layout = json.loads((store.oci_dir / "oci-layout").read_text())
    assert not list(_schema_validator(shared, "image-layout-schema.json").iter_errors(layout))


def test_tag_writes_full_reference_and_replaces_previous(tmp_path, shared):
    store = Store(tmp_path / "s")
    first = _put_image(store, "alpine")
    second = _put_image(store, "alpine", layers=(b"other",))
    _put_image(store, "host:5000/a/b:tag")
    index = json.loads(store.index_path.read_text())
    names = [m["annotations"][REF_NAME] for m in index["manifests"]]
    assert sorted(names) == ["docker.io/library/alpine:latest", "host:5000/a/b:tag"]
    found = store.lookup("alpine")
    assert found is not None
    assert found.digest == second.digest != first.digest
    assert store.lookup("docker.io/library/alpine:latest") == found
    assert not list(_schema_validator(shared, "image-index-schema.json").iter_errors(index))
    manifest = json.loads(store.read_blob(second.digest))
    assert not list(_schema_validator(shared, "image-manifest-schema.json").iter_errors(manifest))


def test_tag_returns_previous_digest(tmp_path):
    store = Store(tmp_path / "s")
    desc = _put_image(store, "app:1")
    assert store.tag("app:1", desc) == desc.digest
    assert store.untag("app:1") == desc.digest
    assert store.untag("app:1") is None
    assert store.lookup("app:1") is None


def test_resolve_gives_layers_with_chain_ids(tmp_path):
    store = Store(tmp_path / "s")
    desc = _put_image(store, "app", layers=(b"one", b"two"))
    image = store.resolve("docker.io/library/app")
    diff_ids = [sha256_digest(b"one"), sha256_digest(b"two")]
    assert image.reference == "docker.io/library/app:latest"
    assert image.manifest_digest == desc.digest
    assert [layer.diff_id for layer in image.layers] == diff_ids
    assert image.chain_ids == chain_ids(diff_ids)
    assert image.config["config"]["Cmd"] == ["/bin/sh"]
    assert image.size == desc.size + image.config_size + 6
    pinned = store.resolve(f"app@{desc.digest}")
    assert pinned.manifest_digest == desc.digest


def test_resolve_unknown_image_names_store_and_image(tmp_path):
    store = Store(tmp_path / "s")
    with pytest.raises(ImageNotFound, match=r"image nope is not in store .*/s"):
        store.resolve("nope")


def test_ingest_checks_digest_and_size_and_leaves_nothing(tmp_path):
    store = Store(tmp_path / "s")
    good = sha256_digest(b"data")
    with pytest.raises(BlobError, match="truncated"):
        store.ingest_blob(io.BytesIO(b"dat"), good, 4)
    with pytest.raises(BlobError, match="larger than"):
        store.ingest_blob(io.BytesIO(b"data!"), good, 4)
    with pytest.raises(BlobError, match="corrupted"):
        store.ingest_blob(io.BytesIO(b"datA"), good, 4)
    assert not store.has_blob(good)
    assert list(store.tmp_dir.iterdir()) == []
    assert store.ingest_blob(io.BytesIO(b"data"), good, 4) is True
    assert store.ingest_blob(io.BytesIO(b"ignored"), good, 4) is False
    assert store.blob_path(good).read_bytes() == b"data"


def test_path_traversal_through_a_digest_is_refused(tmp_path):
    store = Store(tmp_path / "s")
    with pytest.raises(ValueError, match="malformed digest"):
        store.blob_path("sha256:../../etc/passwd")


def test_corrupted_blob_in_store_is_detected(tmp_path):
    store = Store(tmp_path / "s")
    desc = _put_image(store, "app")
    store.blob_path(desc.digest).write_bytes(b"{}")
    with pytest.raises(BlobError, match="corrupted"):
        store.resolve("app")


def test_put_manifest_refuses_missing_blobs(tmp_path):
    store = Store(tmp_path / "s")
    config = Descriptor(OCI_CONFIG, sha256_digest(b"x"), 1)
    with pytest.raises(StoreError, match="missing from store"):
        store.put_manifest(build_oci_manifest(config, []))


def test_plan_gc_keeps_what_is_used():
    plan = plan_gc({"a", "b", "c"}, {"L1", "L2"}, {"a", "x"}, {"L2"})
    assert plan.blobs == {"b", "c"}
    assert plan.layers == {"L1"}


def test_referenced_content_walks_manifests_configs_and_indexes():
    config = _config([sha256_digest(b"one"), sha256_digest(b"two")])
    layers = [Descriptor(OCI_LAYER, sha256_digest(b"L1"), 2),
              Descriptor(OCI_LAYER, sha256_digest(b"L2"), 2)]  # fmt: skip
    config_desc = Descriptor(OCI_CONFIG, sha256_digest(config), len(config))
    manifest = build_oci_manifest(config_desc, layers)
    index = canonical_json(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": sha256_digest(manifest),
                    "size": len(manifest),
                }
            ],
        }
    )
    docs = {sha256_digest(d): d for d in (config, manifest, index)}
    root = Descriptor(OCI_INDEX, sha256_digest(index), len(index))
    blobs, layer_ids = referenced_content([root], docs.get)
    assert blobs == {root.digest, sha256_digest(manifest), config_desc.digest,
                     layers[0].digest, layers[1].digest}  # fmt: skip
    assert layer_ids == set(chain_ids([sha256_digest(b"one"), sha256_digest(b"two")]))
    # A root whose manifest is missing keeps only its own digest.
    missing = Descriptor(OCI_MANIFEST, sha256_digest(b"gone"), 4)
    assert referenced_content([missing], docs.get) == ({missing.digest}, set())


def test_gc_removes_only_unreferenced_and_keeps_shared(tmp_path):
    store = Store(tmp_path / "s")
    _put_image(store, "a", layers=(b"base", b"top-a"))
    _put_image(store, "b", layers=(b"base", b"top-b"))
    stray = store.ingest_bytes(b"stray")
    for chain in store.resolve("a").chain_ids + store.resolve("b").chain_ids:
        (store.layer_path(chain) / "diff").mkdir(parents=True, exist_ok=True)
    before = store.present_blobs()
    previous, result = store.remove("a")
    assert previous is not None
    assert stray in result.blobs
    assert sha256_digest(b"top-a") in result.blobs
    assert sha256_digest(b"base") not in result.blobs
    assert store.present_blobs() == before - set(result.blobs)
    b = store.resolve("b")
    assert store.present_layers() == set(b.chain_ids)
    # Nothing referenced by b is gone: b resolves and all its blobs are there.
    assert all(store.has_blob(layer.digest) for layer in b.layers)


def test_gc_never_removes_layers_a_container_claims(tmp_path):
    store = Store(tmp_path / "s")
    _put_image(store, "a", layers=(b"base", b"top-a"))
    image = store.resolve("a")
    for chain in image.chain_ids:
        (store.layer_path(chain) / "diff").mkdir(parents=True)
    store.register_container("web", image.chain_ids)
    assert (store.containers_dir / "web" / "chain-ids").read_text().split() == image.chain_ids
    result = store.remove("a")[1]
    assert result.layers == []
    assert store.present_layers() == set(image.chain_ids)
    assert store.release_container("web") is True
    assert store.gc().layers == sorted(image.chain_ids)
    assert store.present_layers() == set()


def test_gc_only_limits_removal(tmp_path):
    store = Store(tmp_path / "s")
    one, two = store.ingest_bytes(b"1"), store.ingest_bytes(b"2")
    assert store.gc(only=[one]).blobs == [one]
    assert store.has_blob(two)


def test_gc_empties_tmp(tmp_path):
    store = Store(tmp_path / "s")
    store.init()
    (store.tmp_dir / "layer-stale").mkdir()
    (store.tmp_dir / "layer-stale" / "f").write_text("x")
    (store.tmp_dir / "blob-stale").write_text("x")
    store.gc()
    assert list(store.tmp_dir.iterdir()) == []


def test_lock_is_reentrant_but_does_not_upgrade(tmp_path):
    store = Store(tmp_path / "s")
    with store.lock(), store.lock(), store.lock(shared=True):
        pass
    with (
        store.lock(shared=True),
        pytest.raises(StoreError, match="cannot upgrade"),
        store.lock(),
    ):
        pass


def _tag_many(root, prefix, count):
    store = Store(root)
    for i in range(count):
        _put_image(store, f"{prefix}{i}", layers=(f"{prefix}{i}".encode(),))


def test_concurrent_taggers_lose_no_tag(tmp_path):
    """Two processes tagging at once: index.json keeps every tag (index lock + rename)."""
    root = tmp_path / "s"
    Store(root).init()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_tag_many, args=(root, p, 15)) for p in ("x", "y")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    tags = Store(root).tags()
    assert len(tags) == 30
    assert not [p for p in (root / "oci").iterdir() if p.name.startswith(".index")]
