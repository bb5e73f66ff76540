"""Pure helpers of the registry client and the plain OCI layout sink."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.registry_client import (
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ProtocolError,
    RegistryError,
    sha256_digest,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_layout import OciLayout
from ansible_collections.lapis.layers.plugins.module_utils.registry_store import (
    registry_options,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_transport import (
    Target,
)

TARGET = Target("reg.example", "team/app", "1.0")


def test_errors_name_registry_repository_reference_and_hint() -> None:
    err = RegistryError(TARGET, "manifest unknown", "Check the tag.")
    assert str(err) == (
        "registry reg.example, repository team/app, reference 1.0: manifest unknown. Check the tag."
    )
    assert str(RegistryError(Target("reg.example"), "down")) == "registry reg.example: down"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("text", "not a descriptor"),
        ({"digest": "sha256:00", "size": "12"}, "valid digest or size"),
        ({"size": 3}, "valid digest or size"),
        ({"digest": "nocolon", "size": 3}, "valid digest or size"),
    ],
)
def test_descriptor_rejects_malformed_entries(doc: object, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        Descriptor.from_json(doc, "layer 0", TARGET)


def test_descriptor_reads_media_type_digest_size() -> None:
    digest = "sha256:" + "a" * 64
    doc = {"mediaType": OCI_MANIFEST, "digest": digest, "size": 7}
    assert Descriptor.from_json(doc, "x", TARGET) == Descriptor(OCI_MANIFEST, digest, 7)


def test_sha256_digest() -> None:
    assert sha256_digest(b"") == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


@pytest.mark.parametrize(
    "digest", ["sha256:../../etc/passwd", "sha256:", "md5:abcd", "sha256/x:y", "../blobs"]
)
def test_layout_blob_path_refuses_traversal_digests(tmp_path: Path, digest: str) -> None:
    with pytest.raises(ValueError, match="invalid blob digest"):
        OciLayout(tmp_path).blob_path(digest)


def test_layout_commit_and_tag_is_idempotent(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "l")
    temp = layout.temp_path()
    temp.write_bytes(b"{}")
    digest = sha256_digest(b"{}")
    layout.commit_blob(digest, temp)
    desc = {"mediaType": OCI_INDEX, "digest": digest, "size": 2}

    assert layout.has_blob(digest) and not temp.exists()
    assert layout.tag("v1", desc) is True
    assert layout.tag("v1", desc) is False
    assert layout.lookup("v1") == {
        **desc,
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }
    assert json.loads((tmp_path / "l/oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert len(layout.index()["manifests"]) == 1


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"username": "u"}, "together"),
        ({"password": "p"}, "together"),
        ({"retries": -1}, "retries"),
        ({"parallel": 0}, "parallel"),
    ],
)
def test_registry_options_validation(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        registry_options(params)


def test_registry_options_from_params() -> None:
    options = registry_options(
        {"username": "u", "password": "s3cret-xyz", "insecure_registries": ["h:5000"], "retries": 0}
    )
    assert (options.username, options.password, options.retries) == ("u", "s3cret-xyz", 0)
    assert options.insecure_registries == ("h:5000",)
    assert options.max_workers == 4
    assert "s3cret-xyz" not in repr(options)
