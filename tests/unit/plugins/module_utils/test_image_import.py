"""Image sources: docker-archive conversion, OCI layouts and archives, picking an image."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.image_import import (
    SourceError,
    import_image,
    open_source,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    REF_NAME,
    Descriptor,
    build_oci_manifest,
    canonical_json,
    parse_manifest,
    sha256_digest,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import BlobError, Store


def _layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _config(layers: list[bytes]) -> bytes:
    return canonical_json({"architecture": "amd64", "os": "linux", "config": {},
                           "rootfs": {"type": "layers",
                                      "diff_ids": [sha256_digest(x) for x in layers]}})  # fmt: skip


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", link: str | None = None) -> None:
    info = tarfile.TarInfo(name)
    if link is not None:
        info.type = tarfile.SYMTYPE
        info.linkname = link
    else:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if link is None else None)


def _docker_archive(path, images: list[dict]) -> None:
    """images: {"tags": [...], "layers": [bytes...], "gzip": [bool...], "links": {i: target}}"""
    listing = []
    with tarfile.open(path, "w") as tar:
        for n, image in enumerate(images):
            layers = image["layers"]
            config = _config(layers)
            config_name = f"{sha256_digest(config)[7:]}.json"
            _add(tar, config_name, config)
            names = []
            for i, layer in enumerate(layers):
                name = f"img{n}-l{i}/layer.tar"
                if i in image.get("links", {}):
                    _add(tar, name, link=image["links"][i])
                else:
                    zipped = image.get("gzip", [False] * len(layers))[i]
                    _add(tar, name, gzip.compress(layer, mtime=0) if zipped else layer)
                names.append(name)
            listing.append({"Config": config_name, "RepoTags": image["tags"], "Layers": names})
        _add(tar, "manifest.json", json.dumps(listing).encode())


L1 = _layer({"a": b"a\n"})
L2 = _layer({"b": b"b\n"})


def test_docker_archive_becomes_a_canonical_oci_manifest(tmp_path):
    archive = tmp_path / "d.tar"
    _docker_archive(archive, [{"tags": ["app:1"], "layers": [L1, L2], "gzip": [False, True]}])
    source = open_source("docker-archive", str(archive))
    manifest = parse_manifest(source.manifest)
    assert manifest.media_type == OCI_MANIFEST
    assert manifest.config.media_type == OCI_CONFIG
    assert [x.media_type for x in manifest.layers] == [OCI_LAYER, OCI_LAYER_GZIP]
    # The uncompressed layer's blob digest is its diff_id; the gzip one is hashed.
    assert manifest.layers[0].digest == sha256_digest(L1)
    assert manifest.layers[0].size == len(L1)
    with source.open_blob(manifest.layers[1]) as handle:
        assert sha256_digest(handle.read()) == manifest.layers[1].digest
    with source.open_blob(manifest.config) as handle:
        assert handle.read() == _config([L1, L2])
    # Same archive, same manifest bytes: the digest is stable across imports.
    again = open_source("docker-archive", str(archive))
    assert again.manifest == source.manifest
    config = Descriptor(OCI_CONFIG, sha256_digest(_config([L1, L2])), len(_config([L1, L2])))
    assert source.manifest == build_oci_manifest(config, manifest.layers)
    source.close()
    again.close()


def test_docker_archive_follows_a_symlinked_layer_member(tmp_path):
    archive = tmp_path / "d.tar"
    _docker_archive(archive, [
        {"tags": ["one:1"], "layers": [L1]},
        {"tags": ["two:1"], "layers": [L1, L2], "links": {0: "../img0-l0/layer.tar"}},
    ])  # fmt: skip
    source = open_source("docker-archive", str(archive), "two:1")
    manifest = parse_manifest(source.manifest)
    with source.open_blob(manifest.layers[0]) as handle:
        assert handle.read() == L1
    source.close()


def test_symlinked_member_escaping_the_archive_is_refused(tmp_path):
    archive = tmp_path / "d.tar"
    _docker_archive(archive, [{"tags": ["x:1"], "layers": [L1],
                               "links": {0: "../../../etc/passwd"}}])  # fmt: skip
    with pytest.raises(SourceError, match="leads outside the archive or loops"):
        open_source("docker-archive", str(archive))


def test_symlink_loop_in_archive_is_refused(tmp_path):
    archive = tmp_path / "d.tar"
    _docker_archive(archive, [{"tags": ["x:1"], "layers": [L1],
                               "links": {0: "layer.tar"}}])  # fmt: skip
    with pytest.raises(SourceError, match="loops"):
        open_source("docker-archive", str(archive))


@pytest.mark.parametrize(
    ("source_ref", "tags"),
    [("two:1", ["two:1"]), ("docker.io/library/two:1", ["two:1"]), ("@1", ["two:1"]),
     ("localhost/z:9", ["localhost/z:9", "two:1"])],
)  # fmt: skip
def test_source_ref_picks_by_repo_tag_normalised_or_position(tmp_path, source_ref, tags):
    archive = tmp_path / "d.tar"
    _docker_archive(archive, [{"tags": ["one:1"], "layers": [L1]},
                              {"tags": tags, "layers": [L2]}])  # fmt: skip
    source = open_source("docker-archive", str(archive), source_ref)
    assert parse_manifest(source.manifest).layers[0].digest == sha256_digest(L2)
    source.close()


def test_several_images_need_source_ref(tmp_path):
    archive = tmp_path / "d.tar"
    _docker_archive(archive, [{"tags": ["one:1"], "layers": [L1]},
                              {"tags": ["two:1"], "layers": [L2]}])  # fmt: skip
    with pytest.raises(SourceError, match=r"holds 2 images \(one:1, two:1\); set source_ref"):
        open_source("docker-archive", str(archive))
    with pytest.raises(SourceError, match="has no image 'three'"):
        open_source("docker-archive", str(archive), "three")


def test_layer_count_must_match_diff_ids(tmp_path):
    archive = tmp_path / "d.tar"
    with tarfile.open(archive, "w") as tar:
        _add(tar, "c.json", _config([L1, L2]))
        _add(tar, "l.tar", L1)
        _add(tar, "manifest.json", json.dumps([{"Config": "c.json", "Layers": ["l.tar"]}]).encode())
    with pytest.raises(SourceError, match="1 layers listed but the config has 2 diff_ids"):
        open_source("docker-archive", str(archive))


def test_not_an_archive_or_wrong_kind(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(SourceError, match="cannot be read as a tar archive"):
        open_source("docker-archive", str(junk))
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(SourceError, match=r"no manifest\.json; is it a docker-archive"):
        open_source("docker-archive", str(empty))
    with pytest.raises(SourceError, match="not an OCI image layout"):
        open_source("oci-archive", str(empty))
    with pytest.raises(SourceError, match="unknown image source 'docker'"):
        open_source("docker", str(empty))


def _layout(root, entries: list[tuple[str | None, bytes]]) -> list[str]:
    """An OCI layout whose index lists one image per (ref name, layer); returns digests."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    manifests, digests = [], []
    for name, layer in entries:
        config = _config([layer])
        for data in (config, layer):
            (blobs / sha256_digest(data)[7:]).write_bytes(data)
        manifest = build_oci_manifest(
            Descriptor(OCI_CONFIG, sha256_digest(config), len(config)),
            [Descriptor(OCI_LAYER, sha256_digest(layer), len(layer))],
        )
        (blobs / sha256_digest(manifest)[7:]).write_bytes(manifest)
        entry = {"mediaType": OCI_MANIFEST, "digest": sha256_digest(manifest),
                 "size": len(manifest)}  # fmt: skip
        if name:
            entry["annotations"] = {REF_NAME: name}
        manifests.append(entry)
        digests.append(sha256_digest(manifest))
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))
    return digests


def test_layout_picks_by_ref_name_and_checks_the_manifest(tmp_path):
    layout = tmp_path / "layout"
    digests = _layout(layout, [("latest", L1), ("docker.io/library/app:2", L2)])
    assert open_source("oci", str(layout), "latest").digest == digests[0]
    assert open_source("oci", str(layout), "app:2").digest == digests[1]
    with pytest.raises(SourceError, match=r"holds 2 images \(latest, docker.io/library/app:2\)"):
        open_source("oci", str(layout))
    (layout / "blobs/sha256" / digests[1][7:]).write_bytes(b"{}")
    with pytest.raises(BlobError, match=f"blob {digests[1]} is corrupted"):
        open_source("oci", str(layout), "app:2")


def test_oci_archive_is_read_in_place(tmp_path):
    layout = tmp_path / "layout"
    digests = _layout(layout, [(None, L1)])
    archive = tmp_path / "layout.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(layout, arcname=".")
    source = open_source("oci-archive", str(archive))
    assert source.digest == digests[0]
    layer = parse_manifest(source.manifest).layers[0]
    with source.open_blob(layer) as handle:
        assert handle.read() == L1
    source.close()


def test_a_pinned_name_must_match_the_source_manifest(tmp_path):
    layout = tmp_path / "layout"
    digests = _layout(layout, [("x", L1)])
    store = Store(tmp_path / "store")
    wrong = "sha256:" + "1" * 64
    with pytest.raises(SourceError, match=f"app@{wrong} pins manifest {wrong}, but the source"):
        import_image(store, f"app@{wrong}", open_source("oci", str(layout)), check_mode=True)
    result = import_image(store, f"app@{digests[0]}", open_source("oci", str(layout)),
                          check_mode=True)  # fmt: skip
    assert result.changed and result.reference == f"docker.io/library/app@{digests[0]}"
    assert not store.exists()
