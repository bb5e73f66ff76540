"""Unit tests of the build executor's pure parts: upper directory to OCI layer tar, chmod,
timestamps, the cache records and the COPY rules that need no mount."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.build_cache import (
    BuildCache,
    CacheRecord,
)
from ansible_collections.lapis.layers.plugins.module_utils.build_copy import (
    CopyError,
    apply_chmod,
    copy_matches,
    is_archive,
    url_basename,
)
from ansible_collections.lapis.layers.plugins.module_utils.build_executor import timestamp
from ansible_collections.lapis.layers.plugins.module_utils.build_layer import (
    BuiltLayer,
    LayerBuildError,
    install_layer_dir,
    next_chain_id,
    write_layer_blob,
)
from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_context import (
    context_sources,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="whiteout devices need root")


@pytest.mark.parametrize(
    ("spec", "mode", "is_dir", "expected"),
    [
        ("0755", 0o644, False, 0o755),
        ("u+x", 0o644, False, 0o744),
        ("go-r", 0o644, False, 0o600),
        ("a=rX", 0o644, False, 0o444),
        ("a=rX", 0o600, True, 0o555),
        ("u=rwx,g=rx,o=", 0o777, False, 0o750),
        ("+t", 0o755, True, 0o1755),
        ("", 0o640, False, 0o640),
    ],
)
def test_apply_chmod(spec: str, mode: int, is_dir: bool, expected: int) -> None:
    assert apply_chmod(spec, mode, is_dir) == expected


def test_timestamp() -> None:
    assert timestamp(1700000000) == "2023-11-14T22:13:20Z"
    assert timestamp(1700000000.5) == "2023-11-14T22:13:20.500000000Z"


def test_url_basename() -> None:
    assert url_basename("https://example.com/a/tool.tar.gz?x=1") == "tool.tar.gz"
    with pytest.raises(CopyError, match="no file name"):
        url_basename("https://example.com/")


def _members(store: Store, layer: BuiltLayer) -> list[tarfile.TarInfo]:
    data = store.blob_path(layer.digest).read_bytes()
    raw = gzip.decompress(data) if layer.media_type.endswith("+gzip") else data
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        return archive.getmembers()


@needs_root
def test_upper_to_layer_tar(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "conf").write_text("c")
    os.link(upper / "etc" / "conf", upper / "etc" / "hard")
    os.mknod(upper / "etc" / "gone", 0o600 | 0o020000, os.makedev(0, 0))
    (upper / "opaque").mkdir()
    os.setxattr(upper / "opaque", "trusted.overlay.opaque", b"y")
    os.setxattr(upper / "etc" / "conf", "trusted.overlay.origin", b"\x00x")
    os.setxattr(upper / "etc" / "conf", "user.note", b"kept")
    (upper / "opaque" / "new").write_text("n")
    (upper / "link").symlink_to("etc/conf")
    os.utime(upper / "etc" / "conf", (2_000_000_000, 2_000_000_000))
    layer = write_layer_blob(store, str(upper), "gzip", epoch=1_700_000_000)
    members = {m.name: m for m in _members(store, layer)}
    assert list(members) == [
        "etc",
        "etc/conf",
        "etc/.wh.gone",
        "etc/hard",
        "link",
        "opaque",
        "opaque/.wh..wh..opq",
        "opaque/new",
    ]
    assert members["etc/hard"].islnk() and members["etc/hard"].linkname == "etc/conf"
    assert members["etc/conf"].mtime == 1_700_000_000
    assert members["etc/conf"].pax_headers == {"SCHILY.xattr.user.note": "kept"}
    assert members["link"].issym() and members["link"].linkname == "etc/conf"
    assert members["etc/.wh.gone"].isfile() and members["etc/.wh.gone"].size == 0
    assert members["etc/conf"].uname == "" and members["etc/conf"].uid == 0
    again = write_layer_blob(store, str(upper), "gzip", epoch=1_700_000_000)
    assert again == layer  # same tree, same bytes
    chain = next_chain_id([], layer.diff_id)
    install_layer_dir(store, chain, layer, str(upper))
    assert store.has_layer(chain) and not upper.exists()
    assert store.layer_metadata(chain)["blobs"] == [layer.digest]


def test_compressions_differ_and_are_recorded(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "f").write_text("same")
    layers = {c: write_layer_blob(store, str(upper), c, epoch=0) for c in ("gzip", "zstd", "none")}
    assert len({layer.diff_id for layer in layers.values()}) == 1
    assert len({layer.digest for layer in layers.values()}) == 3
    assert layers["none"].digest == layers["none"].diff_id
    with pytest.raises(LayerBuildError, match="unknown layer compression"):
        write_layer_blob(store, str(upper), "lz4")


def test_cache_records_need_their_layer(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))
    store.init()
    cache = BuildCache(store)
    key = "sha256:" + "a" * 64
    cache.put(CacheRecord(key, "2023-11-14T22:13:20Z"))
    assert cache.get(key) == CacheRecord(key, "2023-11-14T22:13:20Z")
    layer = BuiltLayer("sha256:" + "b" * 64, "sha256:" + "c" * 64, "x", 1, 1, 1)
    other = "sha256:" + "d" * 64
    cache.put(CacheRecord(other, "t", layer, "sha256:" + "e" * 64))
    assert cache.get(other) is None  # blob and layer directory are missing
    assert cache.get("sha256:" + "f" * 64) is None


def test_copy_rules_without_mount(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    (context / "dir" / "sub").mkdir(parents=True)
    (context / "dir" / "sub" / "f").write_text("f")
    (context / "one").write_text("1")
    root = tmp_path / "root"
    root.mkdir()
    (root / "existing").mkdir()
    copy_matches(root, context, context_sources(str(context), ["dir"]), "/dest")
    copy_matches(root, context, context_sources(str(context), ["one"]), "/existing")
    copy_matches(root, context, context_sources(str(context), ["one"]), "/renamed")
    copy_matches(root, context, context_sources(str(context), ["dir/sub/f"]), "/p/", parents=True)
    assert (root / "dest" / "sub" / "f").read_text() == "f"
    assert (root / "existing" / "one").read_text() == "1"
    assert (root / "renamed").read_text() == "1"
    assert (root / "p" / "dir" / "sub" / "f").read_text() == "f"
    archive = context / "a.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(context / "one", arcname="x/one")
    assert is_archive(archive) and not is_archive(context / "one")
    copy_matches(root, context, context_sources(str(context), ["a.tar"]), "/ex", extract=True)
    assert (root / "ex" / "x" / "one").read_text() == "1"
