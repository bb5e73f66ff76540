"""Pulls from a real docker-registry (TLS + htpasswd), with skopeo as the oracle."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.registry_client import (
    DigestMismatch,
    NotFound,
    PlatformNotFound,
    RegistryClient,
    RegistryOptions,
    Unauthorized,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_layout import OciLayout
from ansible_collections.lapis.layers.plugins.module_utils.registry_reference import (
    host_platform,
    parse_platform,
    parse_reference,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_transport import (
    NetworkFailure,
)
from ansible_collections.lapis.layers.tests.system.registry.conftest import (
    PASSWORD,
    PORTS,
    SIDE_ADDR,
    USER,
    Registry,
    busybox_layers,
    make_image,
    make_index,
    skopeo,
    skopeo_push,
    tree_snapshot,
)


def client_for(registry: Registry, password: str = PASSWORD, **kw: object) -> RegistryClient:
    options = RegistryOptions(
        username=USER,
        password=password,
        ca_path=str(registry.pki.ca) if registry.pki else None,
        backoff=0.05,
        **kw,  # type: ignore[arg-type]
    )
    return RegistryClient(options)


@pytest.fixture(scope="module")
def pushed(basic_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """busybox pushed by skopeo as ``lapis/busybox:1``; returns its manifest descriptor."""
    layout = tmp_path_factory.mktemp("src-layout")
    desc = make_image(layout, "1", busybox_layers())
    skopeo_push(layout, "1", basic_registry, "lapis/busybox")
    return desc


def test_pull_matches_skopeo(
    basic_registry: Registry, pushed: dict[str, object], tmp_path: Path
) -> None:
    ref = parse_reference(f"{basic_registry.host}/lapis/busybox:1")
    dest = OciLayout(tmp_path / "dest")
    client = client_for(basic_registry)

    result = client.pull(ref, dest)
    dest.tag(
        "1",
        {
            "mediaType": result.manifest.media_type,
            "digest": result.manifest.digest,
            "size": len(result.manifest.raw),
        },
    )

    raw = skopeo(
        "inspect",
        "--raw",
        *basic_registry.tls_args(),
        f"docker://{basic_registry.host}/lapis/busybox:1",
    ).stdout
    assert result.manifest.digest == pushed["digest"]
    assert result.manifest.raw == raw.encode()
    layers = [layer["digest"] for layer in json.loads(raw)["layers"]]
    assert [d.digest for d in result.layers] == layers
    assert sorted(result.fetched) == sorted([*layers, result.config.digest])
    # skopeo reads what we wrote as a valid layout and re-verifies every blob digest.
    copied = tmp_path / "copied"
    skopeo("copy", f"oci:{dest.root}:1", f"dir:{copied}")
    assert json.loads((copied / "manifest.json").read_text())["layers"] == json.loads(raw)["layers"]
    assert not list((dest.root / "blobs").glob(".partial-*"))


def test_second_pull_transfers_no_layer_blobs(
    basic_registry: Registry, pushed: dict[str, object], tmp_path: Path
) -> None:
    ref = parse_reference(f"{basic_registry.host}/lapis/busybox:1")
    dest = OciLayout(tmp_path / "dest")
    client_for(basic_registry).pull(ref, dest)
    gets_before = basic_registry.blob_gets("lapis/busybox")

    again = client_for(basic_registry).pull(ref, dest)

    assert again.fetched == []
    assert again.bytes_fetched == 0
    assert len(again.skipped) == 3
    assert basic_registry.blob_gets("lapis/busybox") == gets_before


def test_pull_by_digest_pins_exactly(
    basic_registry: Registry, pushed: dict[str, object], tmp_path: Path
) -> None:
    ref = parse_reference(f"{basic_registry.host}/lapis/busybox@{pushed['digest']}")
    result = client_for(basic_registry).pull(ref, OciLayout(tmp_path / "dest"))
    assert result.manifest.digest == pushed["digest"]


def test_unknown_tag_names_registry_repository_and_tag(
    basic_registry: Registry, pushed: dict[str, object], tmp_path: Path
) -> None:
    ref = parse_reference(f"{basic_registry.host}/lapis/busybox:nope")
    with pytest.raises(NotFound) as err:
        client_for(basic_registry).pull(ref, OciLayout(tmp_path / "dest"))
    text = str(err.value)
    assert basic_registry.host in text and "lapis/busybox" in text and "nope" in text
    assert "MANIFEST_UNKNOWN" in text


def test_wrong_credentials_fail_clearly_and_leave_destination_unchanged(
    basic_registry: Registry, pushed: dict[str, object], tmp_path: Path
) -> None:
    ref = parse_reference(f"{basic_registry.host}/lapis/busybox:1")
    dest = OciLayout(tmp_path / "dest")
    client_for(basic_registry).pull(ref, dest)
    before = tree_snapshot(dest.root)

    with pytest.raises(Unauthorized) as err:
        client_for(basic_registry, password="wrong").pull(ref, dest)

    assert f"user '{USER}'" in str(err.value) and "refused" in str(err.value)
    assert basic_registry.host in str(err.value)
    assert tree_snapshot(dest.root) == before


def test_anonymous_pull_is_refused_with_a_hint(
    basic_registry: Registry, pushed: dict[str, object], tmp_path: Path
) -> None:
    options = RegistryOptions(ca_path=str(basic_registry.pki.ca), backoff=0.05)  # type: ignore[union-attr]
    ref = parse_reference(f"{basic_registry.host}/lapis/busybox:1")
    with pytest.raises(Unauthorized, match=r"authentication required.*username and password"):
        RegistryClient(options).pull(ref, OciLayout(tmp_path / "dest"))


def test_credentials_from_podman_auth_file(
    basic_registry: Registry,
    pushed: dict[str, object],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = tmp_path / "run"
    (runtime / "containers").mkdir(parents=True)
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (runtime / "containers" / "auth.json").write_text(
        json.dumps({"auths": {basic_registry.host: {"auth": auth}}})
    )
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    client = RegistryClient(RegistryOptions(ca_path=str(basic_registry.pki.ca)))  # type: ignore[union-attr]
    result = client.pull(
        parse_reference(f"{basic_registry.host}/lapis/busybox:1"), OciLayout(tmp_path / "d")
    )
    assert result.manifest.digest == pushed["digest"]


def test_untrusted_certificate_is_a_clear_tls_error(
    basic_registry: Registry, pushed: dict[str, object], tmp_path: Path
) -> None:
    client = RegistryClient(RegistryOptions(username=USER, password=PASSWORD, backoff=0.05))
    with pytest.raises(NetworkFailure, match=r"not trusted.*ca_path"):
        client.pull(
            parse_reference(f"{basic_registry.host}/lapis/busybox:1"), OciLayout(tmp_path / "d")
        )


def test_tampered_blob_fails_and_leaves_destination_unchanged(
    basic_registry: Registry, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    desc = make_image(src, "t", busybox_layers(extra=b"tamper me"))
    skopeo_push(src, "t", basic_registry, "lapis/tampered")
    manifest = json.loads((src / "blobs/sha256" / desc["digest"][7:]).read_text())
    victim = basic_registry.blob_data(manifest["layers"][1]["digest"])  # unique to this image
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    victim.write_bytes(bytes(data))
    dest = OciLayout(tmp_path / "dest")
    dest.ensure()
    before = tree_snapshot(dest.root)

    with pytest.raises(DigestMismatch) as err:
        client_for(basic_registry).pull(
            parse_reference(f"{basic_registry.host}/lapis/tampered:t"), dest
        )

    assert manifest["layers"][1]["digest"] in str(err.value)
    assert "lapis/tampered" in str(err.value)
    assert tree_snapshot(dest.root) == before
    assert not list((dest.root / "blobs").glob(".partial-*"))


def test_interrupted_layer_download_resumes_with_range(
    basic_registry: Registry, cutting_proxy, tmp_path: Path
) -> None:
    big = os.urandom(3 << 20)
    src = tmp_path / "src"
    make_image(src, "big", [{"data/blob": big}], compress=False)
    skopeo_push(src, "big", basic_registry, "lapis/big")
    proxy = cutting_proxy(1 << 20)
    ref = parse_reference(f"{SIDE_ADDR}:{PORTS['proxy']}/lapis/big:big")
    dest = OciLayout(tmp_path / "dest")

    result = client_for(basic_registry).pull(ref, dest)

    layer = result.layers[0]  # skopeo compressed the layer on push: use the registry's digest
    assert layer.size > 3 << 20
    assert proxy.cuts == 1
    assert result.resumed == 1
    pulled = dest.blob_path(layer.digest).read_bytes()
    assert pulled == basic_registry.blob_data(layer.digest).read_bytes()
    assert hashlib.sha256(pulled).hexdigest() == layer.digest[7:]
    # The resumed request asked for the rest only: the registry answered 206 Partial Content,
    # and far less than twice the layer went through the proxy.
    assert any('" 206 ' in line for line in basic_registry.access_lines("/v2/lapis/big/blobs/"))
    assert proxy.bytes_down < layer.size * 1.3


def test_multi_platform_index_picks_the_right_manifest(
    basic_registry: Registry, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    amd = make_image(src, "amd", busybox_layers(), arch="amd64")
    arm = make_image(src, "arm", [{"etc/arch": b"arm64\n"}], arch="arm64", variant="v8")
    ppc = make_image(src, "ppc", [{"etc/arch": b"ppc64le\n"}], arch="ppc64le")
    platforms = [
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
        {"os": "linux", "architecture": "ppc64le"},
    ]
    entries = [{**d, "platform": p} for d, p in zip((amd, arm, ppc), platforms, strict=True)]
    index = make_index(src, "multi", entries)
    skopeo_push(src, "multi", basic_registry, "lapis/multi", "--all")
    ref = parse_reference(f"{basic_registry.host}/lapis/multi:multi")
    client = client_for(basic_registry)

    arm_pull = client.pull(ref, OciLayout(tmp_path / "arm"), parse_platform("linux/arm64"))
    ppc_pull = client.pull(ref, OciLayout(tmp_path / "ppc"), parse_platform("linux/ppc64le"))
    host_pull = client.pull(ref, OciLayout(tmp_path / "host"))

    assert arm_pull.manifest.digest == arm["digest"]
    assert arm_pull.index is not None and arm_pull.index.digest == index["digest"]
    assert ppc_pull.manifest.digest == ppc["digest"]
    if host_platform().architecture == "amd64":
        assert host_pull.manifest.digest == amd["digest"]
    with pytest.raises(PlatformNotFound) as err:
        client.pull(ref, OciLayout(tmp_path / "none"), parse_platform("linux/s390x"))
    assert "linux/s390x" in str(err.value) and "linux/arm64/v8" in str(err.value)
    assert "lapis/multi" in str(err.value)
    assert not (tmp_path / "none" / "blobs" / "sha256").exists() or not any(
        (tmp_path / "none" / "blobs" / "sha256").iterdir()
    )
