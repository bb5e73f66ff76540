"""lapis.layers.image_push run the way a user runs it, against the real registry."""

from __future__ import annotations

from pathlib import Path

from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store
from ansible_collections.lapis.layers.plugins.module_utils.registry_client import (
    RegistryOptions,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_store import pull_to_store
from ansible_collections.lapis.layers.tests.system.conftest import RunModule
from ansible_collections.lapis.layers.tests.system.registry.conftest import (
    PASSWORD,
    USER,
    Registry,
    busybox_layers,
    make_image,
    skopeo,
    skopeo_push,
)


def test_image_push_module_four_runs_and_bad_password(
    basic_registry: Registry, run_module: RunModule, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    desc = make_image(src, "m", busybox_layers(extra=b"module push"))
    skopeo_push(src, "m", basic_registry, "lapis/module-src")
    store = Store(tmp_path / "store")
    ca = str(basic_registry.pki.ca)  # type: ignore[union-attr]
    name = f"{basic_registry.host}/lapis/module-src:m"
    pull_to_store(store, name, RegistryOptions(username=USER, password=PASSWORD, ca_path=ca))
    dest = f"{basic_registry.host}/lapis/module-dest:m"
    args: dict[str, object] = {"name": name, "dest": dest, "store": str(store.root), "ca_path": ca}
    args |= {"username": USER, "password": PASSWORD, "chunk_size": 200_000}

    check = run_module("lapis.layers.image_push", check=True, diff=True, **args)
    apply = run_module("lapis.layers.image_push", diff=True, **args)
    check2 = run_module("lapis.layers.image_push", check=True, diff=True, **args)
    apply2 = run_module("lapis.layers.image_push", diff=True, **args)

    assert check["changed"] and apply["changed"], (check, apply)
    assert not check2["changed"] and not apply2["changed"]
    # (the tree callback keeps no "diff" key: the same facts are in the result)
    assert check["previous_digest"] is None and apply["previous_digest"] is None
    assert apply2["previous_digest"] == apply["digest"] == desc["digest"] == check["digest"]
    assert set(apply["blobs"].values()) == {"chunked"}
    assert PASSWORD not in str(apply)
    raw = skopeo("inspect", "--raw", *basic_registry.tls_args(), f"docker://{dest}").stdout
    assert raw.encode() == (src / "blobs/sha256" / desc["digest"][7:]).read_bytes()

    bad = run_module("lapis.layers.image_push", **{**args, "password": "wrong"})
    assert bad["_ansible_rc"] != 0, bad
    assert bad["error_kind"] == "unauthorized"
    assert basic_registry.host in bad["msg"] and "lapis/module-dest" in bad["msg"]
    assert "wrong" not in bad["msg"]
