"""Manifests, configs, media types and chain ids."""

import json

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import (
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    ManifestError,
    build_oci_manifest,
    chain_ids,
    docker_to_oci_manifest,
    layer_compression,
    parse_config,
    parse_index,
    parse_manifest,
    pick_platform,
    sha256_digest,
)

D1 = "sha256:2685a7248878b7ce2c8e4cccc04b440cb9c4e08096aa8dd42afe46ea0ff079cc"
D2 = "sha256:84ff92691f909a05b224e1c56abb4864f01b4f8e3c854e4bb4c7baf1d3f6d652"
D3 = "sha256:8897395fd26dc44ad0e2a834335b33198cb41ac4d98dfddf58eced3853fa7b17"


def test_chain_ids_match_values_computed_with_sha256sum():
    # Reference values: printf '%s %s' CHAIN DIFF | sha256sum, computed outside Python.
    assert chain_ids([]) == []
    assert chain_ids([D1]) == [D1]
    assert chain_ids([D1, D2, D3]) == [
        D1,
        "sha256:46918ae27f1cea2d3a0c80011c5be99274f208c25045becb37cfdb5c3b5d5148",
        "sha256:9270afeab0a3894cdec058a0cd074825e98f4aae9e4462ce4236cd68a3c75df4",
    ]


def _manifest(**over):
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": D1, "size": 10},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": D2, "size": 5}],
    }
    doc.update(over)
    return json.dumps(doc).encode()


def test_parse_oci_and_docker_manifests():
    manifest = parse_manifest(_manifest())
    assert manifest.media_type == OCI_MANIFEST
    assert manifest.config == Descriptor(OCI_CONFIG, D1, 10)
    assert [layer.digest for layer in manifest.layers] == [D2]
    docker = _manifest(
        mediaType=DOCKER_MANIFEST,
        config={"mediaType": "application/vnd.docker.container.image.v1+json", "digest": D1,
                "size": 1},
        layers=[{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                 "digest": D2, "size": 2}],
    )  # fmt: skip
    assert parse_manifest(docker).media_type == DOCKER_MANIFEST


@pytest.mark.parametrize(
    ("over", "cause"),
    [
        ({"schemaVersion": 1}, "schemaVersion"),
        ({"mediaType": "application/vnd.oci.image.index.v1+json"}, "not an image manifest"),
        ({"config": {"mediaType": "application/x-helm", "digest": D1, "size": 1}}, "artifact"),
        ({"config": {"mediaType": OCI_CONFIG, "digest": "sha256:xyz", "size": 1}}, "digest"),
        ({"config": {"mediaType": OCI_CONFIG, "digest": "md5:" + "a" * 32, "size": 1}}, "digest"),
        ({"config": {"mediaType": OCI_CONFIG, "digest": D1, "size": -1}}, "size"),
        ({"layers": [{"mediaType": "text/plain", "digest": D2, "size": 1}]}, "media type"),
        ({"layers": "x"}, "layers"),
    ],
)
def test_invalid_manifests_are_refused(over, cause):
    with pytest.raises(ManifestError, match=cause):
        parse_manifest(_manifest(**over))


def test_not_json_is_refused():
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_manifest(b"{")


@pytest.mark.parametrize(
    ("media_type", "compression"),
    [
        ("application/vnd.oci.image.layer.v1.tar", "none"),
        ("application/vnd.oci.image.layer.v1.tar+gzip", "gzip"),
        ("application/vnd.oci.image.layer.v1.tar+zstd", "zstd"),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", "gzip"),
    ],
)
def test_layer_compression(media_type, compression):
    assert layer_compression(media_type) == compression


def test_parse_config_and_mismatched_rootfs():
    config = parse_config(json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["A=1"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [D1, D2]},
    }).encode())  # fmt: skip
    assert config.diff_ids == (D1, D2)
    assert config.config["Cmd"] == ["/bin/sh"]
    with pytest.raises(ManifestError, match=r"rootfs\.type"):
        parse_config(b'{"rootfs": {"type": "x", "diff_ids": []}}')
    with pytest.raises(ManifestError, match="diff_id 0"):
        parse_config(b'{"rootfs": {"type": "layers", "diff_ids": ["nope"]}}')


def test_generated_manifest_is_canonical_and_stable():
    config = Descriptor(OCI_CONFIG, D1, 10)
    layers = [Descriptor(OCI_LAYER_GZIP, D2, 5)]
    first = build_oci_manifest(config, layers)
    assert first == build_oci_manifest(config, layers)
    assert sha256_digest(first) == sha256_digest(first)
    parsed = parse_manifest(first)
    assert parsed.layers == tuple(layers)
    assert b" " not in first


def test_pick_platform(monkeypatch):
    monkeypatch.setattr(
        "ansible_collections.lapis.layers.plugins.module_utils.oci_manifest.host_platform",
        lambda: ("linux", "arm64"),
    )
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": D1, "size": 1,
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": OCI_MANIFEST, "digest": D2, "size": 1,
         "platform": {"os": "linux", "architecture": "arm64"}},
    ]}).encode()  # fmt: skip
    assert pick_platform(parse_index(index), "x").digest == D2
    with pytest.raises(ManifestError, match="no manifest for platform linux/arm64"):
        pick_platform(parse_index(index)[:1], "x")


def test_pick_platform_prefers_the_host_variant(monkeypatch):
    module = "ansible_collections.lapis.layers.plugins.module_utils.oci_manifest"
    monkeypatch.setattr(f"{module}.host_platform", lambda: ("linux", "arm"))
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": D1, "size": 1,
         "platform": {"os": "linux", "architecture": "arm"}},
        {"mediaType": OCI_MANIFEST, "digest": D2, "size": 1,
         "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
    ]}).encode()  # fmt: skip
    monkeypatch.setattr(f"{module}.host_variant", lambda: "v6")
    assert pick_platform(parse_index(index), "x").digest == D2
    monkeypatch.setattr(f"{module}.host_variant", lambda: "v7")  # no variant means v7
    assert pick_platform(parse_index(index), "x").digest == D1
    monkeypatch.setattr(f"{module}.host_variant", lambda: "v5")  # none fits: the first
    assert pick_platform(parse_index(index), "x").digest == D1


def test_docker_manifest_to_oci_keeps_blobs_and_is_stable():
    docker = json.dumps({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": D1, "size": 7},
        "layers": [
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": D2,
             "size": 8},
            {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
             "digest": D3, "size": 9, "urls": ["https://example.invalid/x"]},
        ],
    }).encode()  # fmt: skip
    converted = docker_to_oci_manifest(docker)
    assert converted == docker_to_oci_manifest(docker)
    manifest = parse_manifest(converted)
    assert manifest.media_type == OCI_MANIFEST
    assert manifest.config == Descriptor(OCI_CONFIG, D1, 7)
    assert [(x.media_type, x.digest, x.size) for x in manifest.layers] == [
        (OCI_LAYER_GZIP, D2, 8),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", D3, 9),
    ]
    with pytest.raises(ManifestError, match="not a Docker schema2 manifest"):
        docker_to_oci_manifest(converted)
