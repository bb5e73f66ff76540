"""Reference normalisation and platform matching for the registry client."""

from __future__ import annotations

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.registry_reference import (
    InvalidReference,
    Platform,
    host_platform,
    index_platforms,
    parse_platform,
    parse_reference,
    platform_matches,
    select_manifest,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("alpine", "docker.io", "library/alpine", "latest", None),
        ("alpine:3.20", "docker.io", "library/alpine", "3.20", None),
        ("centos:7", "docker.io", "library/centos", "7", None),
        ("bitnami/redis", "docker.io", "bitnami/redis", "latest", None),
        ("docker.io/alpine", "docker.io", "library/alpine", "latest", None),
        ("index.docker.io/library/alpine:3", "docker.io", "library/alpine", "3", None),
        ("quay.io/podman/stable:v5", "quay.io", "podman/stable", "v5", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("localhost:5000/a/b/c:t", "localhost:5000", "a/b/c", "t", None),
        ("127.0.0.31:5031/lapis/busybox:1", "127.0.0.31:5031", "lapis/busybox", "1", None),
        (f"alpine@{DIGEST}", "docker.io", "library/alpine", None, DIGEST),
        (f"ghcr.io/o/r:v1@{DIGEST}", "ghcr.io", "o/r", "v1", DIGEST),
        ("my_ns/my-app__x.y", "docker.io", "my_ns/my-app__x.y", "latest", None),
    ],
)
def test_parse_reference_normalises_like_docker(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )


def test_docker_hub_api_host_and_reference() -> None:
    ref = parse_reference("alpine:3.20")
    assert ref.api_host == "registry-1.docker.io"
    assert ref.reference == "3.20"
    assert str(ref) == "docker.io/library/alpine:3.20"
    pinned = ref.with_digest(DIGEST)
    assert pinned.reference == DIGEST
    assert parse_reference("quay.io/a/b").api_host == "quay.io"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Alpine",
        "alpine:",
        "alpine:-bad",
        "alpine@sha256:short",
        "alpine@md5:" + "a" * 32,
        "https://quay.io/a/b",
        "a//b",
        "a/-b",
        "quay.io/UPPER/x",
        "host:port:x/a",
        "a:" + "t" * 129,
    ],
)
def test_parse_reference_rejects_malformed_names(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse_reference(text)


def test_parse_reference_path_traversal_is_not_a_repository() -> None:
    with pytest.raises(InvalidReference, match="component"):
        parse_reference("quay.io/../../etc/passwd")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
        ("Linux/ARM/v7", Platform("linux", "arm", "v7")),
    ],
)
def test_parse_platform(text: str, expected: Platform) -> None:
    assert parse_platform(text) == expected


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "a/b/c/d"])
def test_parse_platform_rejects(text: str) -> None:
    with pytest.raises(InvalidReference, match="OS/ARCH"):
        parse_platform(text)


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("x86_64", "linux/amd64"),
        ("aarch64", "linux/arm64/v8"),
        ("armv7l", "linux/arm/v7"),
        ("mips", "linux/mips"),
        ("weird", "linux/weird"),
    ],
)
def test_host_platform_maps_uname_machine(machine: str, expected: str) -> None:
    assert str(host_platform(machine)) == expected


@pytest.mark.parametrize(
    ("wanted", "candidate", "match"),
    [
        ("linux/amd64", {"os": "linux", "architecture": "amd64"}, True),
        ("linux/arm64", {"os": "linux", "architecture": "arm64", "variant": "v8"}, True),
        ("linux/arm64/v8", {"os": "linux", "architecture": "arm64"}, True),
        ("linux/arm", {"os": "linux", "architecture": "arm", "variant": "v7"}, True),
        ("linux/arm/v6", {"os": "linux", "architecture": "arm", "variant": "v7"}, False),
        ("linux/amd64", {"os": "windows", "architecture": "amd64"}, False),
        ("linux/amd64", {"os": "unknown", "architecture": "unknown"}, False),
        ("linux/amd64", {}, False),
    ],
)
def test_platform_matches(wanted: str, candidate: dict[str, str], match: bool) -> None:
    assert platform_matches(parse_platform(wanted), candidate) is match


INDEX = {
    "manifests": [
        {"digest": "sha256:att", "platform": {"os": "unknown", "architecture": "unknown"}},
        {
            "digest": "sha256:v6",
            "platform": {"os": "linux", "architecture": "arm", "variant": "v6"},
        },
        {
            "digest": "sha256:v7",
            "platform": {"os": "linux", "architecture": "arm", "variant": "v7"},
        },
        {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
    ]
}


def test_select_manifest_picks_the_platform_and_skips_attestations() -> None:
    assert select_manifest(INDEX, parse_platform("linux/arm"))["digest"] == "sha256:v7"  # type: ignore[index]
    assert select_manifest(INDEX, parse_platform("linux/arm/v6"))["digest"] == "sha256:v6"  # type: ignore[index]
    assert select_manifest(INDEX, parse_platform("linux/amd64"))["digest"] == "sha256:amd"  # type: ignore[index]
    assert select_manifest(INDEX, parse_platform("linux/s390x")) is None
    assert index_platforms(INDEX) == ["linux/arm/v6", "linux/arm/v7", "linux/amd64"]
