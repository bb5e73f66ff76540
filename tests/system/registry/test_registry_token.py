"""Bearer-token auth end to end, and plain HTTP for registries listed as insecure."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.registry_client import (
    Manifest,
    RegistryClient,
    RegistryOptions,
    Unauthorized,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_layout import OciLayout
from ansible_collections.lapis.layers.plugins.module_utils.registry_reference import (
    parse_reference,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_transport import (
    NetworkFailure,
)
from ansible_collections.lapis.layers.tests.system.conftest import RunModule
from ansible_collections.lapis.layers.tests.system.registry.conftest import (
    PASSWORD,
    USER,
    Registry,
    TokenServer,
    busybox_layers,
    make_image,
    skopeo,
    skopeo_push,
    tree_snapshot,
)


def token_client(registry: Registry, password: str | None = PASSWORD) -> RegistryClient:
    user = USER if password is not None else None
    options = RegistryOptions(username=user, password=password, ca_path=str(registry.pki.ca))  # type: ignore[union-attr]
    return RegistryClient(options)


def test_token_auth_pull_and_push_end_to_end(
    token_registry: Registry, token_server: TokenServer, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    desc = make_image(src, "1", busybox_layers(extra=b"token"))
    skopeo_push(src, "1", token_registry, "lapis/tok")
    client = token_client(token_registry)
    dest = OciLayout(tmp_path / "dest")

    pulled = client.pull(parse_reference(f"{token_registry.host}/lapis/tok:1"), dest)
    pushed = client.push(
        parse_reference(f"{token_registry.host}/lapis/tok-copy:1"),
        dest,
        pulled.manifest,
        mount_from=["lapis/tok"],
    )

    assert pulled.manifest.digest == desc["digest"]
    assert set(pushed.blobs.values()) == {"mounted"}
    raw = skopeo(
        "inspect",
        "--raw",
        *token_registry.tls_args(),
        f"docker://{token_registry.host}/lapis/tok-copy:1",
    ).stdout
    assert raw.encode() == pulled.manifest.raw
    ours = [r for r in token_server.requests if r.get("account") == USER]
    assert any(r["scopes"] == ["repository:lapis/tok:pull"] for r in ours), ours
    mount_scopes = {"repository:lapis/tok-copy:pull,push", "repository:lapis/tok:pull"}
    assert any(mount_scopes <= set(r["scopes"]) for r in ours), ours


def test_token_auth_wrong_password_is_refused_by_the_token_server(
    token_registry: Registry, token_server: TokenServer, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_image(src, "1", busybox_layers(extra=b"token-wrong"))
    skopeo_push(src, "1", token_registry, "lapis/tok-wrong")
    dest = tmp_path / "dest"
    before = tree_snapshot(dest)

    with pytest.raises(Unauthorized) as err:
        token_client(token_registry, "nope").pull(
            parse_reference(f"{token_registry.host}/lapis/tok-wrong:1"), OciLayout(dest)
        )

    assert "token server" in str(err.value) and f"user '{USER}'" in str(err.value)
    assert {"denied": USER} in token_server.requests
    assert tree_snapshot(dest) == before


def test_token_auth_anonymous_gets_no_access(
    token_registry: Registry, token_server: TokenServer, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_image(src, "1", busybox_layers(extra=b"token-anon"))
    skopeo_push(src, "1", token_registry, "lapis/tok-anon")
    with pytest.raises(Unauthorized, match=r"authentication required"):
        token_client(token_registry, None).pull(
            parse_reference(f"{token_registry.host}/lapis/tok-anon:1"), OciLayout(tmp_path / "d")
        )


def test_plain_http_only_for_insecure_registries(plain_registry: Registry, tmp_path: Path) -> None:
    src = tmp_path / "src"
    desc = make_image(src, "1", busybox_layers(extra=b"plain"))
    skopeo_push(src, "1", plain_registry, "lapis/plain")
    ref = parse_reference(f"{plain_registry.host}/lapis/plain:1")

    with pytest.raises(NetworkFailure, match=r"insecure_registries"):
        RegistryClient(RegistryOptions(backoff=0.05)).pull(ref, OciLayout(tmp_path / "refused"))
    options = RegistryOptions(insecure_registries=(plain_registry.host,))
    result = RegistryClient(options).pull(ref, OciLayout(tmp_path / "dest"))
    pushed = RegistryClient(options).push(
        parse_reference(f"{plain_registry.host}/lapis/plain-back:1"),
        OciLayout(src),
        Manifest(result.manifest.raw, result.manifest.media_type, result.manifest.digest),
    )

    assert result.manifest.digest == desc["digest"]
    assert set(pushed.blobs.values()) == {"uploaded"}
    assert json.loads(result.manifest.raw)["config"]["digest"] == result.config.digest


def test_image_module_pulls_through_the_token_flow_with_an_auth_file(
    token_registry: Registry, token_server: TokenServer, run_module: RunModule, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    desc = make_image(src, "1", busybox_layers(extra=b"token module"))
    skopeo_push(src, "1", token_registry, "lapis/tok-module")
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    auth_file = tmp_path / "auth.json"  # the Podman form: containers/auth.json
    auth_file.write_text(json.dumps({"auths": {token_registry.host: {"auth": auth}}}))
    store = tmp_path / "store"
    ca = str(token_registry.pki.ca)  # type: ignore[union-attr]
    args = {"name": f"{token_registry.host}/lapis/tok-module:1", "store": str(store)}

    pulled = run_module("lapis.layers.image", auth_file=str(auth_file), ca_path=ca, **args)
    refused = run_module("lapis.layers.image", ca_path=ca, pull="always", **args)

    assert pulled["changed"] and pulled["manifest_digest"] == desc["digest"], pulled
    ours = [r for r in token_server.requests if r.get("account") == USER]
    assert any(r["scopes"] == ["repository:lapis/tok-module:pull"] for r in ours), ours
    assert refused["_ansible_rc"] != 0 and refused["error_kind"] == "unauthorized", refused
    assert "lapis/tok-module" in refused["msg"]
