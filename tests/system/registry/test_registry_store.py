"""The client wired to the image store: pull into it and push from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store
from ansible_collections.lapis.layers.plugins.module_utils.registry_client import DigestMismatch
from ansible_collections.lapis.layers.plugins.module_utils.registry_store import (
    pull_to_store,
    push_from_store,
)
from ansible_collections.lapis.layers.tests.system.registry.conftest import (
    Registry,
    busybox_layers,
    make_image,
    skopeo,
    skopeo_push,
    store_content,
    store_options,
)


def test_pull_into_store_then_idempotent_and_always(
    basic_registry: Registry, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    first = make_image(src, "v", busybox_layers(extra=b"store v1"))
    skopeo_push(src, "v", basic_registry, "lapis/store")
    store = Store(tmp_path / "store")
    name = f"{basic_registry.host}/lapis/store:v"
    options = store_options(basic_registry)

    predicted = pull_to_store(store, name, options, check_mode=True)
    assert predicted.changed and set(predicted.blobs.values()) == {"fetch"}
    assert not store.exists()
    pulled = pull_to_store(store, name, options)
    gets = basic_registry.blob_gets("lapis/store")
    again = pull_to_store(store, name, options)
    always = pull_to_store(store, name, options, pull="always")

    assert pulled.changed and pulled.digest == first["digest"]
    assert set(pulled.blobs.values()) == {"fetched"}
    assert len(pulled.layers_unpacked) == 2 and first["digest"] in pulled.blobs_added
    assert not again.changed and not always.changed
    assert basic_registry.blob_gets("lapis/store") == gets
    image = store.resolve(name)
    assert image.manifest_digest == first["digest"]
    assert len(store.ensure_layers(image)) == 2
    assert (
        (store.lowerdir(image.layers[1].chain_id) / "etc/motd").read_bytes().endswith(b"store v1")
    )
    raw = skopeo("inspect", "--raw", f"oci:{store.oci_dir}:{name}").stdout
    assert json.loads(raw) == json.loads((src / "blobs/sha256" / first["digest"][7:]).read_text())

    # The tag moves in the registry: "always" follows it, fetching only the new layer.
    second = make_image(src, "v", busybox_layers(extra=b"store v2"))
    skopeo_push(src, "v", basic_registry, "lapis/store")
    moved = pull_to_store(store, name, options, pull="always")
    assert moved.changed and moved.previous_digest == first["digest"]
    assert moved.digest == second["digest"]
    assert sorted(moved.blobs.values()) == [
        "fetched",
        "fetched",
        "present",
    ]  # config, motd; busybox


def test_tampered_blob_leaves_the_store_unchanged(basic_registry: Registry, tmp_path: Path) -> None:
    src = tmp_path / "src"
    desc = make_image(src, "t", busybox_layers(extra=b"store tamper"))
    skopeo_push(src, "t", basic_registry, "lapis/store-tamper")
    manifest = json.loads((src / "blobs/sha256" / desc["digest"][7:]).read_text())
    victim = basic_registry.blob_data(manifest["layers"][1]["digest"])
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    store = Store(tmp_path / "store")
    store.init()
    before = store_content(store.root)

    with pytest.raises(DigestMismatch, match="lapis/store-tamper"):
        pull_to_store(
            store, f"{basic_registry.host}/lapis/store-tamper:t", store_options(basic_registry)
        )

    assert store_content(store.root) == before
    assert store.tags() == {}


def test_push_from_store_round_trip(basic_registry: Registry, tmp_path: Path) -> None:
    src = tmp_path / "src"
    desc = make_image(src, "p", busybox_layers(extra=b"store push"))
    skopeo_push(src, "p", basic_registry, "lapis/store-src")
    store = Store(tmp_path / "store")
    options = store_options(basic_registry)
    name = f"{basic_registry.host}/lapis/store-src:p"
    pull_to_store(store, name, options)
    dest = f"{basic_registry.host}/lapis/store-dest:p"

    predicted = push_from_store(store, name, options, dest=dest, check_mode=True)
    pushed = push_from_store(store, name, options, dest=dest, mount_from=["lapis/store-src"])
    again = push_from_store(store, name, options, dest=dest)

    assert predicted.changed and predicted.previous_digest is None
    assert pushed.changed and set(pushed.blobs.values()) == {"mounted"}
    assert not again.changed
    raw = skopeo("inspect", "--raw", *basic_registry.tls_args(), f"docker://{dest}").stdout
    assert raw.encode() == (src / "blobs/sha256" / desc["digest"][7:]).read_bytes()
