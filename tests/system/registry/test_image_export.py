"""lapis.layers.image_push with ``path``: an image of the store written as an OCI layout,
an OCI archive or a docker-archive, read back by skopeo and by our own import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.image_export import export_image
from ansible_collections.lapis.layers.plugins.module_utils.image_import import (
    import_image,
    open_source,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store
from ansible_collections.lapis.layers.plugins.module_utils.registry_store import pull_to_store
from ansible_collections.lapis.layers.tests.system.conftest import RunModule
from ansible_collections.lapis.layers.tests.system.registry.conftest import (
    Registry,
    busybox_layers,
    make_image,
    skopeo,
    skopeo_push,
    store_options,
)


@pytest.fixture(scope="module")
def pulled(basic_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A store holding ``lapis/export:e`` (pushed by skopeo, pulled here)."""
    src = tmp_path_factory.mktemp("export-src")
    make_image(src, "e", busybox_layers(extra=b"exported"))
    skopeo_push(src, "e", basic_registry, "lapis/export")
    store = Store(tmp_path_factory.mktemp("export-store"))
    pull_to_store(store, f"{basic_registry.host}/lapis/export:e", store_options(basic_registry))
    return store


def name_of(registry: Registry) -> str:
    return f"{registry.host}/lapis/export:e"


def test_oci_archive_four_runs_and_skopeo_reads_the_same_manifest(
    basic_registry: Registry, pulled: Store, run_module: RunModule, tmp_path: Path
) -> None:
    archive = tmp_path / "image.tar"
    name = name_of(basic_registry)
    args = {"name": name, "store": str(pulled.root), "path": str(archive)}
    args |= {"format": "oci-archive", "dest": "export:1"}

    check = run_module("lapis.layers.image_push", check=True, **args)
    apply = run_module("lapis.layers.image_push", **args)
    check2 = run_module("lapis.layers.image_push", check=True, **args)
    apply2 = run_module("lapis.layers.image_push", **args)

    assert check["changed"] and apply["changed"], (check, apply)
    assert not check2["changed"] and not apply2["changed"], (check2, apply2)
    assert apply2["previous_digest"] == apply["digest"] == pulled.lookup(name).digest  # type: ignore[union-attr]
    raw = skopeo("inspect", "--raw", f"oci-archive:{archive}:export:1").stdout
    assert raw.encode() == pulled.read_blob(apply["digest"])


def test_oci_layout_collects_images_and_skopeo_copies_it(
    basic_registry: Registry, pulled: Store, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    name = name_of(basic_registry)

    first = export_image(pulled, name, str(layout), "oci", ref_name="a")
    second = export_image(pulled, name, str(layout), "oci", ref_name="b")
    again = export_image(pulled, name, str(layout), "oci", ref_name="a")

    assert first.changed and second.changed and not again.changed
    index = json.loads((layout / "index.json").read_text())
    assert len(index["manifests"]) == 2
    skopeo("copy", f"oci:{layout}:b", f"oci:{tmp_path / 'copy'}:b")  # skopeo verifies digests
    raw = skopeo("inspect", "--raw", f"oci:{layout}:a").stdout
    assert raw.encode() == pulled.read_blob(first.digest)


def test_docker_archive_is_read_by_skopeo_and_imports_back_unchanged(
    basic_registry: Registry, pulled: Store, tmp_path: Path
) -> None:
    archive = tmp_path / "docker.tar"
    name = name_of(basic_registry)
    image = pulled.resolve(name)

    done = export_image(pulled, name, str(archive), "docker-archive", ref_name="export:d")
    again = export_image(pulled, name, str(archive), "docker-archive", ref_name="export:d")
    inspected = json.loads(skopeo("inspect", f"docker-archive:{archive}").stdout)
    back = Store(tmp_path / "back")
    source = open_source("docker-archive", str(archive))
    try:
        imported = import_image(back, "export:d", source)
    finally:
        source.close()

    assert done.changed and not again.changed
    # (skopeo names a docker-archive's layers by their uncompressed digest, the diff_id)
    assert inspected["Layers"] == [layer.diff_id for layer in image.layers]
    assert imported.image is not None
    assert imported.image.config_digest == image.config_digest
    assert [x.chain_id for x in imported.image.layers] == [x.chain_id for x in image.layers]
