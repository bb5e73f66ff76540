"""Image references: parsing, Docker's normalisation, and refusal of invalid ones."""

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.oci_refs import (
    ImageRef,
    InvalidReference,
    normalize_image_ref,
    parse_image_ref,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alpine", "docker.io/library/alpine:latest"),
        ("alpine:3.20", "docker.io/library/alpine:3.20"),
        ("library/alpine", "docker.io/library/alpine:latest"),
        ("docker.io/alpine", "docker.io/library/alpine:latest"),
        ("index.docker.io/library/alpine:1", "docker.io/library/alpine:1"),
        ("user/app:v1", "docker.io/user/app:v1"),
        ("host:5000/a/b:tag", "host:5000/a/b:tag"),
        ("host:5000/a/b", "host:5000/a/b:latest"),
        ("localhost/app", "localhost/app:latest"),
        ("quay.io/org/sub/app:1.2-rc_3", "quay.io/org/sub/app:1.2-rc_3"),
        (f"alpine@{DIGEST}", f"docker.io/library/alpine@{DIGEST}"),
        (f"alpine:3@{DIGEST}", f"docker.io/library/alpine:3@{DIGEST}"),
        ("a__b/c-d/e.f:T_ag", "docker.io/a__b/c-d/e.f:T_ag"),
        ("[::1]:5000/app:x", "[::1]:5000/app:x"),
    ],
)
def test_normalisation(text, expected):
    assert normalize_image_ref(text) == expected
    # Normalising is idempotent: the store's names parse to themselves.
    assert normalize_image_ref(expected) == expected


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        ("", "empty"),
        ("Alpine", "invalid repository name component"),
        ("alpine:", "invalid tag"),
        ("alpine:-x", "invalid tag"),
        ("alpine@sha256:abc", "invalid digest"),
        (f"alpine@sha512:{'a' * 128}", "invalid digest"),
        ("a//b", "invalid repository name component"),
        ("a/b_", "invalid repository name component"),
        ("al pine", "white space"),
        ("host:5000/", "invalid repository name component"),
        (":tag", "no repository name"),
        ("bad_host!:5000/app", "invalid registry host"),
        ("a" * 300, "longer than"),
    ],
)
def test_invalid_references_are_refused_with_their_cause(text, cause):
    with pytest.raises(InvalidReference, match=cause):
        parse_image_ref(text)


def test_parts_and_familiar_form():
    ref = parse_image_ref("alpine:3.20")
    assert ref == ImageRef("docker.io", "library/alpine", "3.20", None)
    assert ref.name == "docker.io/library/alpine"
    assert ref.familiar == "alpine:3.20"
    assert parse_image_ref("host:5000/a/b:t").familiar == "host:5000/a/b:t"
    pinned = parse_image_ref(f"alpine@{DIGEST}")
    assert pinned.tag is None
    assert pinned.digest == DIGEST
