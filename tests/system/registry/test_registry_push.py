"""Pushes to a real docker-registry, read back by skopeo (and run by podman)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.registry_client import (
    Manifest,
    RegistryClient,
    RegistryOptions,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_layout import OciLayout
from ansible_collections.lapis.layers.plugins.module_utils.registry_reference import (
    parse_platform,
    parse_reference,
)
from ansible_collections.lapis.layers.tests.system.registry.conftest import (
    PASSWORD,
    USER,
    Registry,
    busybox_layers,
    make_image,
    make_index,
    skopeo,
)


def client_for(registry: Registry) -> RegistryClient:
    ca = str(registry.pki.ca) if registry.pki else None
    return RegistryClient(RegistryOptions(username=USER, password=PASSWORD, ca_path=ca))


def local_manifest(layout: Path, desc: dict[str, object]) -> Manifest:
    digest = str(desc["digest"])
    raw = (layout / "blobs/sha256" / digest[7:]).read_bytes()
    return Manifest(raw, str(desc["mediaType"]), digest)


def inspect_raw(registry: Registry, name: str) -> bytes:
    out = skopeo("inspect", "--raw", *registry.tls_args(), f"docker://{registry.host}/{name}")
    return out.stdout.encode()


def test_push_monolithic_then_skopeo_reads_the_same_digests(
    basic_registry: Registry, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    desc = make_image(src, "1", busybox_layers(extra=b"monolithic"))
    manifest = local_manifest(src, desc)
    ref = parse_reference(f"{basic_registry.host}/lapis/pushed:1")
    client = client_for(basic_registry)

    result = client.push(ref, OciLayout(src), manifest)
    again = client.push(ref, OciLayout(src), manifest)

    assert set(result.blobs.values()) == {"uploaded"}
    assert set(again.blobs.values()) == {"exists"}
    assert inspect_raw(basic_registry, "lapis/pushed:1") == manifest.raw
    back = tmp_path / "back"
    skopeo("copy", *basic_registry.tls_args("src"), f"docker://{ref}", f"oci:{back}:1")
    index = json.loads((back / "index.json").read_text())
    assert index["manifests"][0]["digest"] == desc["digest"]


def test_push_chunked_upload(basic_registry: Registry, tmp_path: Path) -> None:
    src = tmp_path / "src"
    desc = make_image(src, "c", busybox_layers(extra=b"chunked"))
    ref = parse_reference(f"{basic_registry.host}/lapis/chunked:c")

    result = client_for(basic_registry).push(
        ref, OciLayout(src), local_manifest(src, desc), chunk_size=256 << 10
    )

    assert set(result.blobs.values()) == {"chunked"}
    patches = basic_registry.access_lines('"PATCH /v2/lapis/chunked/blobs/uploads/')
    assert len(patches) >= 4  # the ~1 MB busybox layer went in 256 KiB chunks
    assert inspect_raw(basic_registry, "lapis/chunked:c") == local_manifest(src, desc).raw
    skopeo("copy", *basic_registry.tls_args("src"), f"docker://{ref}", f"oci:{tmp_path / 'back'}:c")


def test_push_mounts_blobs_from_another_repository(
    basic_registry: Registry, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    desc = make_image(src, "m", busybox_layers(extra=b"mount me"))
    manifest = local_manifest(src, desc)
    client = client_for(basic_registry)
    client.push(parse_reference(f"{basic_registry.host}/lapis/origin:m"), OciLayout(src), manifest)

    result = client.push(
        parse_reference(f"{basic_registry.host}/lapis/mounted:m"),
        OciLayout(src),
        manifest,
        mount_from=["lapis/origin"],
    )

    assert set(result.blobs.values()) == {"mounted"}
    assert result.bytes_sent == 0
    mounts = basic_registry.access_lines('"POST /v2/lapis/mounted/blobs/uploads/?mount=sha256')
    assert len(mounts) == 3
    assert all("from=lapis%2Forigin" in line and '" 201 ' in line for line in mounts)
    assert inspect_raw(basic_registry, "lapis/mounted:m") == manifest.raw


def test_push_index_then_skopeo_copies_all_platforms(
    basic_registry: Registry, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    amd = make_image(src, "amd", busybox_layers(extra=b"index"), arch="amd64")
    arm = make_image(src, "arm", [{"etc/arch": b"arm64 pushed\n"}], arch="arm64", variant="v8")
    entries = [
        {**amd, "platform": {"os": "linux", "architecture": "amd64"}},
        {**arm, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
    ]
    index = make_index(src, "multi", entries)
    ref = parse_reference(f"{basic_registry.host}/lapis/pushed-index:multi")
    client = client_for(basic_registry)

    client.push(ref, OciLayout(src), local_manifest(src, index))

    assert inspect_raw(basic_registry, "lapis/pushed-index:multi") == local_manifest(src, index).raw
    back = tmp_path / "back"
    skopeo("copy", "--all", *basic_registry.tls_args("src"), f"docker://{ref}", f"oci:{back}:m")
    copied = json.loads((back / "index.json").read_text())["manifests"][0]
    assert copied["digest"] == index["digest"]
    pulled = client.pull(ref, OciLayout(tmp_path / "arm"), parse_platform("linux/arm64/v8"))
    assert pulled.manifest.digest == arm["digest"]


@pytest.fixture
def runc_container(tmp_path: Path) -> Iterator[str]:
    """A container id for runc, deleted afterwards even when the test fails."""
    container_id = f"lapis-registry-{tmp_path.name[-12:]}"
    try:
        yield container_id
    finally:
        subprocess.run(["runc", "delete", "-f", container_id], capture_output=True, check=False)


def test_pushed_image_copied_by_skopeo_runs_under_runc(
    basic_registry: Registry, tmp_path: Path, runc_container: str
) -> None:
    # podman refuses to start containers on this machine (its default rlimits exceed the
    # hard limits and CAP_SYS_RESOURCE is missing), so the image goes skopeo -> umoci -> runc.
    src = tmp_path / "src"
    desc = make_image(src, "run", busybox_layers(extra=b"run me"))
    ref = parse_reference(f"{basic_registry.host}/lapis/runnable:run")
    client_for(basic_registry).push(ref, OciLayout(src), local_manifest(src, desc))

    copied = tmp_path / "copied"
    skopeo("copy", *basic_registry.tls_args("src"), f"docker://{ref}", f"oci:{copied}:run")
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{copied}:run", str(bundle)],
        check=True,
        capture_output=True,
    )
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/cat", "/etc/motd"]
    (bundle / "config.json").write_text(json.dumps(config))
    proc = subprocess.run(
        ["runc", "run", "--bundle", str(bundle), runc_container],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "lapis registry test\nrun me"
