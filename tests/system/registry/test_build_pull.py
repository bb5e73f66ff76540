"""lapis.layers.image_build resolves a FROM it lacks through the registry pull.

A real registry (TLS, htpasswd) holds a busybox image pushed by skopeo; the build's
store starts empty. Check mode resolves the tag without fetching anything, the first
build pulls the base (same manifest digest skopeo pushed) and builds on it, and the
second build neither pulls nor rebuilds. ``pull: never`` and an unknown tag fail
naming the image and the cause.
"""

from __future__ import annotations

from pathlib import Path

from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store
from ansible_collections.lapis.layers.tests.system.conftest import RunModule
from ansible_collections.lapis.layers.tests.system.registry.conftest import (
    PASSWORD,
    USER,
    Registry,
    busybox_layers,
    make_image,
    skopeo_push,
)

REPO = "lapis/build-base"


def _build_args(registry: Registry, store: Path, base: str, **extra: object) -> dict[str, object]:
    dockerfile = f"FROM {base}\nRUN echo built > /built && cat /etc/motd >> /built\n"
    args: dict[str, object] = {
        "name": "localhost/pulled-base:1",
        "dockerfile_content": dockerfile,
        "store": str(store),
        "username": USER,
        "password": PASSWORD,
        "source_date_epoch": 0,
    }
    if registry.pki:
        args["ca_path"] = str(registry.pki.ca)
    return args | extra


def test_build_pulls_a_missing_base_once(
    basic_registry: Registry, run_module: RunModule, tmp_path: Path
) -> None:
    desc = make_image(tmp_path / "src", "b", busybox_layers(extra=b"build base"))
    skopeo_push(tmp_path / "src", "b", basic_registry, REPO)
    store = tmp_path / "store"
    base = f"{basic_registry.host}/{REPO}:b"
    args = _build_args(basic_registry, store, base)

    check = run_module("lapis.layers.image_build", check=True, **args)
    gets_after_check = basic_registry.blob_gets(REPO)
    blobs_after_check = list(store.rglob("blobs/sha256/*"))
    first = run_module("lapis.layers.image_build", **args)
    gets_after_first = basic_registry.blob_gets(REPO)
    second = run_module("lapis.layers.image_build", **args)

    assert check["changed"] and check["digest"] is None, check
    assert [s["status"] for s in check["steps"]] == ["would pull"], check["steps"]
    assert gets_after_check == 0, "check mode fetched blobs"
    assert blobs_after_check == [], "check mode wrote to the store"

    assert first["changed"] and first["_ansible_rc"] == 0, first
    statuses = [s["status"] for s in first["steps"]]
    assert statuses[0] == "pulled" and statuses[-1] == "built", first["steps"]
    assert Store(store).resolve(base).manifest_digest == desc["digest"]
    assert gets_after_first == 3  # config and two layers, once

    assert not second["changed"], second
    assert [s["status"] for s in second["steps"]][-1] == "cached"
    assert all(s["status"] != "pulled" for s in second["steps"])
    assert basic_registry.blob_gets(REPO) == gets_after_first
    assert second["digest"] == first["digest"]


def test_build_without_pull_or_with_unknown_tag_fails_naming_the_image(
    basic_registry: Registry, run_module: RunModule, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    base = f"{basic_registry.host}/{REPO}:no-such-tag"

    never = run_module(
        "lapis.layers.image_build", **_build_args(basic_registry, store, base, pull="never")
    )
    unknown = run_module("lapis.layers.image_build", **_build_args(basic_registry, store, base))
    unknown_check = run_module(
        "lapis.layers.image_build", check=True, **_build_args(basic_registry, store, base)
    )

    assert never["_ansible_rc"] != 0 and "pull is never" in never["msg"], never
    assert base in never["msg"]
    for result in (unknown, unknown_check):
        assert result["_ansible_rc"] != 0, result
        assert "pulling it failed" in result["msg"] and "no-such-tag" in result["msg"], result
    assert PASSWORD not in unknown["msg"]
    assert list(store.rglob("blobs/sha256/*")) == [], "a failed pull left blobs behind"
