"""The go-containerregistry layer fixtures (../shared/conformance/layer-tars) flattened.

Every image of every docker-archive fixture is unpacked twice: its layer blobs
applied in order (``flatten_blobs``), and each layer extracted in overlay format
then flattened from those directories (``flatten_layers``). Both must give exactly
the ``expectedRootfs`` of ``expected.json`` (nothing missing, nothing extra, no
``.wh.*`` left), and every layer's diff_id must match.
"""

from __future__ import annotations

import json
import posixpath
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.layer_tar import (
    extract_layer,
    flatten_blobs,
    flatten_layers,
)

ARCHIVES = [
    "source_image.tar",
    "whiteout_image.tar",
    "whiteout_dir.tar",
    "overwritten_file.tar",
    "test_link.tar",
]


def _expected(shared: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((shared / "conformance/layer-tars/expected.json").read_text())
    return data["archives"]


def _member_bytes(archive: tarfile.TarFile, name: str) -> bytes:
    """A member's bytes, following in-archive symlinks relative to the link's directory."""
    for _hop in range(10):
        info = archive.getmember(name)
        if not info.issym():
            handle = archive.extractfile(info)
            assert handle is not None
            return handle.read()
        name = posixpath.normpath(posixpath.join(posixpath.dirname(name), info.linkname))
    raise AssertionError(f"symlink loop in archive at {name}")


def _layer_blobs(shared: Path, archive_name: str, image: dict[str, Any], into: Path) -> list[str]:
    """Write the image's layers (as the docker-archive manifest lists them) into ``into``."""
    into.mkdir()
    with tarfile.open(shared / "conformance/layer-tars" / archive_name) as archive:
        handle = archive.extractfile("manifest.json")
        assert handle is not None
        manifest = json.loads(handle.read())
        entry = next(item for item in manifest if item["Config"] == image["config"])
        assert entry["Layers"] == [layer["path"] for layer in image["layers"]]
        blobs = []
        for index, name in enumerate(entry["Layers"]):
            blob = into / f"layer-{index}"
            blob.write_bytes(_member_bytes(archive, name))
            blobs.append(str(blob))
    return blobs


def _tree(root: Path) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            found[rel] = {"type": "symlink", "target": str(path.readlink())}
        elif stat.S_ISDIR(st.st_mode):
            found[rel] = {"type": "dir", "mode": f"{stat.S_IMODE(st.st_mode):04o}"}
        elif stat.S_ISREG(st.st_mode):
            found[rel] = {
                "type": "file",
                "mode": f"{stat.S_IMODE(st.st_mode):04o}",
                "content": path.read_text(),
            }
        else:
            found[rel] = {"type": f"unexpected {stat.filemode(st.st_mode)}"}
    return found


def _cases(shared: Path) -> list[tuple[str, int, dict[str, Any]]]:
    return [
        (name, index, image)
        for name, archive in _expected(shared).items()
        for index, image in enumerate(archive["images"])
    ]


def test_every_fixture_is_covered(shared: Path) -> None:
    assert sorted(_expected(shared)) == sorted(ARCHIVES)


@pytest.mark.parametrize("archive", ARCHIVES)
def test_flatten_blobs_gives_expected_rootfs(shared: Path, tmp_path: Path, archive: str) -> None:
    images = _expected(shared)[archive]["images"]
    for index, image in enumerate(images):
        blobs = _layer_blobs(shared, archive, image, tmp_path / f"b{index}")
        root = tmp_path / f"flat-{index}"
        results = flatten_blobs(blobs, str(root))
        assert [r.diff_id for r in results] == [layer["diffID"] for layer in image["layers"]]
        gzipped = [layer["gzip"] for layer in image["layers"]]
        assert [result.compression == "gzip" for result in results] == gzipped
        assert _tree(root) == image["expectedRootfs"], f"{archive} image {index}"


@pytest.mark.parametrize("archive", ARCHIVES)
def test_overlay_layers_flatten_to_expected_rootfs(
    shared: Path, tmp_path: Path, archive: str
) -> None:
    images = _expected(shared)[archive]["images"]
    for index, image in enumerate(images):
        blobs = _layer_blobs(shared, archive, image, tmp_path / f"b{index}")
        dirs = [str(tmp_path / f"ovl-{index}-{n}") for n in range(len(blobs))]
        for blob, layer_dir, layer in zip(blobs, dirs, image["layers"], strict=True):
            assert extract_layer(blob, layer_dir).diff_id == layer["diffID"]
            assert not list(Path(layer_dir).rglob(".wh.*"))
        root = tmp_path / f"flat-{index}"
        flatten_layers(dirs, str(root))
        assert _tree(root) == image["expectedRootfs"], f"{archive} image {index}"


def test_whiteout_image_overlay_layer_has_char_device(shared: Path, tmp_path: Path) -> None:
    image = _expected(shared)["whiteout_image.tar"]["images"][0]
    blobs = _layer_blobs(shared, "whiteout_image.tar", image, tmp_path / "b")
    extract_layer(blobs[1], str(tmp_path / "upper"))
    st = (tmp_path / "upper" / "foo.txt").lstat()
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == 0
