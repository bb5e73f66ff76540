"""image_unpack's decisions: what is at dest, what the marker says, which layers are missing."""

import json

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import (
    OCI_CONFIG,
    OCI_LAYER,
    Descriptor,
    build_oci_manifest,
    canonical_json,
    sha256_digest,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import ImageNotFound, Store
from ansible_collections.lapis.layers.plugins.module_utils.oci_unpack import (
    UnpackError,
    marker_doc,
    marker_path,
    plan_unpack,
)


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "store")
    layer = b"layer"
    store.ingest_bytes(layer)
    config = canonical_json({"rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer)]}})
    store.ingest_bytes(config)
    manifest = build_oci_manifest(Descriptor(OCI_CONFIG, sha256_digest(config), len(config)),
                                  [Descriptor(OCI_LAYER, sha256_digest(layer), 5)])  # fmt: skip
    store.tag("app", store.put_manifest(manifest))
    return store


def test_missing_layers_are_planned(store):
    plan = plan_unpack(store, "app", "layers", None)
    assert plan.missing_layers == [sha256_digest(b"layer")]
    assert plan.changed and plan.dest is None
    (store.layer_path(plan.missing_layers[0])).mkdir(parents=True)
    (store.layer_path(plan.missing_layers[0]) / "layer.json").write_text("{}")
    assert not plan_unpack(store, "app", "layers", None).changed


def test_dest_is_refused_with_layers_and_required_otherwise(store, tmp_path):
    with pytest.raises(UnpackError, match="dest is not used with format=layers"):
        plan_unpack(store, "app", "layers", str(tmp_path / "d"))
    with pytest.raises(UnpackError, match="format=flat needs dest"):
        plan_unpack(store, "app", "flat", None)
    with pytest.raises(UnpackError, match="must be an absolute path"):
        plan_unpack(store, "app", "bundle", "relative/dir")
    with pytest.raises(ImageNotFound, match="image other is not in store"):
        plan_unpack(store, "other", "flat", str(tmp_path / "d"))


def test_foreign_content_at_dest_needs_force(store, tmp_path):
    dest = tmp_path / "rootfs"
    dest.mkdir()
    (dest / "precious").write_text("x")
    with pytest.raises(UnpackError, match="set force=true"):
        plan_unpack(store, "app", "flat", str(dest))
    assert plan_unpack(store, "app", "flat", str(dest), force=True).dest_changes


def test_marker_decides_idempotency(store, tmp_path):
    dest = tmp_path / "rootfs"
    dest.mkdir()
    (dest / "bin").mkdir()
    image = store.resolve("app")
    marker_path(dest).write_text(json.dumps(marker_doc(image, "flat")))
    same = plan_unpack(store, "app", "flat", str(dest))
    assert not same.dest_changes and same.before == same.after
    other_format = plan_unpack(store, "app", "bundle", str(dest))
    assert other_format.dest_changes  # written by us before: replaced without force
    marker_path(dest).write_text(json.dumps({**marker_doc(image, "flat"), "manifest_digest": "x"}))
    assert plan_unpack(store, "app", "flat", str(dest)).dest_changes


def test_dest_that_is_a_file_is_refused(store, tmp_path):
    dest = tmp_path / "file"
    dest.write_text("x")
    with pytest.raises(UnpackError, match="exists and is not a directory"):
        plan_unpack(store, "app", "flat", str(dest))
