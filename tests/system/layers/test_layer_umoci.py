"""Our flat unpack beside ``umoci unpack``, and our overlay layers under a real overlay mount.

One image, built here from tars into an OCI layout: a static busybox, setuid and
setgid files, numeric owners, symlinks (absolute and relative), hardlinks, device
nodes, a fifo, xattrs; then a layer with a file whiteout, a directory whiteout, an
opaque directory re-filled in the same layer and type changes (file to directory,
directory to symlink); then a plain-tar layer that re-creates a whited-out
directory. umoci is the oracle for the flat root filesystem; the kernel's overlayfs
is the oracle for the overlay-format layer directories.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.layer_tar import (
    extract_layer,
    flatten_blobs,
    flatten_layers,
)
from ansible_collections.lapis.layers.tests.system.layers.tree_snapshot import (
    hardlink_groups,
    snapshot,
)

BUSYBOX = Path("/bin/busybox")
MTIME = 1_650_000_000
Member = tuple[tarfile.TarInfo, bytes]


def _m(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs: object) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.mtime = kind, MTIME
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def _dirs(*names: str, **attrs: object) -> list[Member]:
    return [_m(name, tarfile.DIRTYPE, b"", **attrs) for name in names]


def _base_layer() -> list[Member]:
    busybox = BUSYBOX.read_bytes()
    return [
        *_dirs("etc", "usr", "usr/bin", "var", "var/lib", "opt", "opt/app", "opt/app/sub", "srv"),
        *_dirs("srv/deep", "replace-dir", "dev"),
        _m("data", tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000),
        _m("tmp", tarfile.DIRTYPE, mode=0o1777),
        _m(
            "etc/passwd",
            data=b"root:x:0:0::/root:/bin/sh\n",
            pax_headers={"SCHILY.xattr.user.note": "n"},
        ),
        _m("usr/bin/busybox", data=busybox, mode=0o755),
        _m("usr/bin/ls", tarfile.LNKTYPE, linkname="usr/bin/busybox"),
        _m("usr/bin/sh", tarfile.SYMTYPE, linkname="busybox"),
        _m("usr/bin/suid", data=b"#!/bin/sh\n", mode=0o4755),
        _m("usr/bin/sgid", data=b"#!/bin/sh\n", mode=0o2755, gid=50),
        _m("bin", tarfile.SYMTYPE, linkname="usr/bin"),
        _m("abs", tarfile.SYMTYPE, linkname="/etc/passwd"),
        _m("var/lib/f1", data=b"one"),
        _m("var/lib/f2", data=b"two"),
        _m("opt/app/a", data=b"a-v1"),
        _m("opt/app/sub/b", data=b"b"),
        _m("srv/one", data=b"1"),
        _m("srv/deep/three", data=b"3"),
        _m("data/owned", data=b"secret", mode=0o600, uid=1000, gid=1000),
        _m("replace-file", data=b"file"),
        _m("replace-dir/x", data=b"x"),
        _m("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
        _m("dev/loop7", tarfile.BLKTYPE, devmajor=7, devminor=7, mode=0o660, gid=6),
        _m("dev/fifo", tarfile.FIFOTYPE, mode=0o600),
    ]


def _change_layer() -> list[Member]:
    return [
        *_dirs("var", "var/lib", "opt", "opt/app"),
        _m("var/lib/.wh.f1"),
        _m("opt/app/.wh.sub"),
        _m("opt/app/a", data=b"a-v2", mode=0o600, uid=5, gid=5),
        _m("srv", tarfile.DIRTYPE, mode=0o750),
        _m("srv/.wh..wh..opq"),
        _m("srv/new", data=b"new"),
        _m("replace-file", tarfile.DIRTYPE),
        _m("replace-file/child", data=b"c"),
        _m("replace-dir", tarfile.SYMTYPE, linkname="etc"),
    ]


def _top_layer() -> list[Member]:
    return [
        *_dirs("opt", "opt/app", "opt/app/sub"),
        _m("opt/app/sub/again", data=b"again"),
        _m("opt/app/h1", data=b"linked"),
        _m("opt/app/h2", tarfile.LNKTYPE, linkname="opt/app/h1"),
        _m(".wh.abs"),
    ]


def _tar(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def _put(layout: Path, data: bytes, media_type: str) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _write_layout(layout: Path, raw_layers: list[bytes], gzipped: list[bool]) -> list[Path]:
    """An OCI image layout (tag ``test``) with these layers; returns the layer blob paths."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    descriptors, blobs = [], []
    for raw, compress in zip(raw_layers, gzipped, strict=True):
        data = gzip.compress(raw, mtime=0) if compress else raw
        kind = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else "")
        descriptors.append(_put(layout, data, kind))
        blobs.append(layout / "blobs" / "sha256" / str(descriptors[-1]["digest"])[7:])
    diff_ids = [f"sha256:{hashlib.sha256(raw).hexdigest()}" for raw in raw_layers]
    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]}}
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": _put(
            layout, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"
        ),
        "layers": descriptors,
    }
    desc = _put(layout, json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    desc["annotations"] = {"org.opencontainers.image.ref.name": "test"}
    index = {"schemaVersion": 2, "manifests": [desc]}
    (layout / "index.json").write_text(json.dumps(index))
    return blobs


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, list[Path]]:
    if not BUSYBOX.exists() or shutil.which("umoci") is None:
        pytest.skip("needs busybox-static and umoci (requirements/apt-test.txt)")
    raw = [_tar(_base_layer()), _tar(_change_layer()), _tar(_top_layer())]
    return tmp_path / "oci", _write_layout(tmp_path / "oci", raw, [True, True, False])


@pytest.fixture
def umoci_rootfs(tmp_path: Path, image: tuple[Path, list[Path]]) -> Path:
    bundle = tmp_path / "umoci-bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{image[0]}:test", str(bundle)],
        check=True,
        capture_output=True,
    )
    return bundle / "rootfs"


@pytest.fixture
def overlay_layers(tmp_path: Path, image: tuple[Path, list[Path]]) -> list[Path]:
    dirs = [tmp_path / f"layer-{index}" for index in range(len(image[1]))]
    for blob, layer_dir in zip(image[1], dirs, strict=True):
        extract_layer(str(blob), str(layer_dir))
    return dirs


@pytest.fixture
def overlay_mount(tmp_path: Path, overlay_layers: list[Path]) -> Iterator[Path]:
    """The overlay-format layers stacked read-only under the kernel's overlayfs."""
    target = tmp_path / "merged"
    target.mkdir()
    lowers = ":".join(str(layer) for layer in reversed(overlay_layers))
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lowers}", str(target)],
        check=True,
        capture_output=True,
    )
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_flat_unpack_matches_umoci(tmp_path: Path, image, umoci_rootfs: Path) -> None:
    ours = tmp_path / "ours"
    flatten_blobs([str(blob) for blob in image[1]], str(ours))
    expected = snapshot(umoci_rootfs)
    assert snapshot(ours) == expected
    assert hardlink_groups(ours) == hardlink_groups(umoci_rootfs)
    for gone in ("var/lib/f1", "opt/app/sub/b", "srv/one", "srv/deep", "abs"):
        assert gone not in expected
    for kept in ("var/lib/f2", "srv/new", "opt/app/sub/again", "replace-file/child"):
        assert kept in expected
    assert expected["replace-dir"] == {
        "type": "symlink",
        "target": "etc",
        "owner": "0:0",
        "xattrs": {},
    }
    assert expected["usr/bin/suid"]["mode"] == "0o4755"
    assert expected["etc/passwd"]["xattrs"] == {"user.note": b"n".hex()}


def test_flatten_layers_matches_umoci(tmp_path: Path, overlay_layers, umoci_rootfs: Path) -> None:
    ours = tmp_path / "from-cache"
    flatten_layers([str(layer) for layer in overlay_layers], str(ours))
    assert snapshot(ours) == snapshot(umoci_rootfs)
    assert hardlink_groups(ours) == hardlink_groups(umoci_rootfs)


def test_overlay_mount_of_layers_matches_flat(
    tmp_path: Path, image, overlay_layers: list[Path], overlay_mount: Path
) -> None:
    flat = tmp_path / "flat"
    flatten_blobs([str(blob) for blob in image[1]], str(flat))
    assert snapshot(overlay_mount) == snapshot(flat)
    run = subprocess.run(
        ["chroot", str(overlay_mount), "/bin/sh", "-c", "ls /opt/app/sub; busybox cat /srv/new"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert run.stdout.split() == ["again", "new"]


def test_overlay_layers_carry_whiteouts_and_opaque(overlay_layers: list[Path]) -> None:
    changes = snapshot(overlay_layers[1])
    for whiteout in ("var/lib/f1", "opt/app/sub"):
        assert changes[whiteout]["type"] == "char"
        assert changes[whiteout]["device"] == "0:0"
    assert changes["srv"]["xattrs"] == {"trusted.overlay.opaque": b"y".hex()}
    assert not [path for path in changes if ".wh." in path]
