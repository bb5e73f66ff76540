# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Benchmark: our layer extraction beside ``umoci unpack`` and ``tar -xzf``, as ratios.

Run through ``bench/unpack`` (which picks the venv's Python). The image is made
once, deterministically, into a cache directory (default
``/var/tmp/lapis-bench-unpack``): 4 gzip layers, about 200 MB in about 20,000
files, with file and directory whiteouts and an opaque directory, plus an OCI
layout holding them for umoci. Only the unpacking is timed; every run unpacks into
fresh directory names and nothing is deleted until all timings are taken (on the
journal-less ext4 here, creating a tree right after deleting one is slow).

Besides the library calls, the modules run as a playbook would run them (ad-hoc
``lapis.layers.image`` import into an empty store, then ``lapis.layers.image_unpack``
flat), each printed with an ad-hoc ``ansible.builtin.ping`` subtracted.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "build" / "collections"))

from ansible_collections.lapis.layers.plugins.module_utils.layer_tar import (  # noqa: E402
    extract_layer,
    flatten_blobs,
    flatten_layers,
)
from ansible_collections.lapis.layers.tests.system.conftest import ansible_env  # noqa: E402

SEED = 20251203
MTIME = 1_700_000_000
FORMAT_VERSION = "2"
SUMMARY: dict[str, int] = {}


class LayerBuilder:
    """Writes one layer tar with deterministic contents."""

    def __init__(self, path: Path, rng: random.Random) -> None:
        self.tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.rng = rng
        self.files = 0
        self.bytes = 0

    def _info(self, name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = kind, mode, MTIME
        return info

    def directory(self, name: str, mode: int = 0o755) -> None:
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode))

    def file(self, name: str, size: int, mode: int = 0o644) -> None:
        info = self._info(name, tarfile.REGTYPE, mode)
        info.size = size
        half = size // 2
        pattern = bytes(self.rng.randrange(32, 127) for _byte in range(8))
        data = self.rng.randbytes(half) + pattern * ((size - half) // 8 + 1)
        self.tar.addfile(info, io.BytesIO(data[:size]))
        self.files += 1
        self.bytes += size

    def special(self, name: str, kind: bytes, target: str = "") -> None:
        info = self._info(name, kind, 0o777 if kind == tarfile.SYMTYPE else 0o644)
        info.linkname = target
        self.tar.addfile(info)
        self.files += 1

    def close(self) -> None:
        self.tar.close()


def _sizes(rng: random.Random, count: int, total: int) -> list[int]:
    """``count`` file sizes summing to about ``total``: mostly small, a few large."""
    weights = [rng.paretovariate(1.2) for _file in range(count)]
    scale = total / sum(weights)
    return [max(1, int(weight * scale)) for weight in weights]


def _populate(layer: LayerBuilder, top: str, count: int, total: int, per_dir: int = 40) -> None:
    layer.directory(top)
    for index, size in enumerate(_sizes(layer.rng, count, total)):
        folder = f"{top}/d{index // per_dir:04d}"
        if index % per_dir == 0:
            layer.directory(folder)
        layer.file(f"{folder}/f{index:05d}.bin", size, 0o755 if index % 7 == 0 else 0o644)


def build_layers(cache: Path) -> list[Path]:
    """The four layer tars (uncompressed), bottom first."""
    rng = random.Random(SEED)
    paths = [cache / f"layer-{index}.tar" for index in range(4)]
    base = LayerBuilder(paths[0], rng)
    for name in ("usr", "usr/lib", "etc", "var", "opt"):
        base.directory(name)
    _populate(base, "usr/lib/base", 11000, 110_000_000)
    _populate(base, "opt/app", 1500, 15_000_000)
    base.special("lib", tarfile.SYMTYPE, "usr/lib")
    base.close()

    second = LayerBuilder(paths[1], rng)
    second.directory("usr")
    _populate(second, "usr/share", 4000, 40_000_000)
    for index in range(200):
        second.special(f"usr/share/link{index}", tarfile.SYMTYPE, f"d0000/f{index:05d}.bin")
        second.special(f"usr/share/hard{index}", tarfile.LNKTYPE, "usr/share/d0000/f00000.bin")
    second.close()

    third = LayerBuilder(paths[2], rng)
    for name in ("usr", "usr/lib", "usr/lib/base", "usr/lib/base/d0001", "opt"):
        third.directory(name)
    for index in range(40, 60):
        third.file(f"usr/lib/base/d0001/.wh.f{index:05d}.bin", 0)
    for index in range(2, 12):
        third.file(f"usr/lib/base/.wh.d{index:04d}", 0)
    third.directory("opt/app")
    third.file("opt/app/.wh..wh..opq", 0)
    _populate(third, "opt/app/v2", 2000, 20_000_000)
    third.close()

    fourth = LayerBuilder(paths[3], rng)
    fourth.directory("var")
    _populate(fourth, "var/cache", 1500, 15_000_000)
    fourth.directory("usr")
    fourth.directory("usr/share")
    fourth.file("usr/share/.wh.d0003", 0)
    fourth.close()
    return paths


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as blob:
        for chunk in iter(lambda: blob.read(1 << 20), b""):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


def _put_blob(layout: Path, data: bytes | Path) -> dict[str, object]:
    if isinstance(data, Path):
        digest, size = _digest(data), data.stat().st_size
    else:
        digest, size = "sha256:" + hashlib.sha256(data).hexdigest(), len(data)
    target = layout / "blobs" / "sha256" / digest.split(":")[1]
    if isinstance(data, Path):
        shutil.copyfile(data, target)
    else:
        target.write_bytes(data)
    return {"digest": digest, "size": size}


def build_layout(cache: Path, tars: list[Path]) -> list[Path]:
    """gzip the layers and write an OCI layout (tag ``bench``) holding them."""
    layout = cache / "oci"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    blobs, layers, diff_ids = [], [], []
    for tar in tars:
        blob = tar.with_suffix(".tar.gz")
        with open(blob, "wb") as out:
            subprocess.run(["gzip", "-6", "-n", "-c", str(tar)], stdout=out, check=True)
        diff_ids.append(_digest(tar))
        desc = _put_blob(layout, blob)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **desc})
        blobs.append(blob)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_desc = _put_blob(layout, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": layers,
    }
    manifest_desc = _put_blob(layout, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_desc,
                "annotations": {"org.opencontainers.image.ref.name": "bench"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return blobs


def prepare(cache: Path) -> list[Path]:
    """The gzip layer blobs, generated into ``cache`` unless already there."""
    stamp = cache / "ready"
    blobs = [cache / f"layer-{index}.tar.gz" for index in range(4)]
    if stamp.exists() and stamp.read_text() == FORMAT_VERSION:
        return blobs
    if cache.exists():
        shutil.rmtree(cache)
    cache.mkdir(parents=True)
    print(f"generating the benchmark image in {cache} (once) ...", flush=True)
    tars = build_layers(cache)
    blobs = build_layout(cache, tars)
    for tar in tars:
        tar.unlink()
    stamp.write_text(FORMAT_VERSION)
    return blobs


def timed(label: str, action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    elapsed = time.perf_counter() - start
    print(f"  {label:<46} {elapsed:7.2f} s", flush=True)
    return elapsed


def _tar_seq(blobs: list[Path], dest: Path) -> None:
    dest.mkdir()
    for blob in blobs:
        subprocess.run(["tar", "-xzf", str(blob), "-C", str(dest)], check=True)


def _ours_overlay(blobs: list[Path], dest: Path) -> None:
    dest.mkdir()
    results = [
        extract_layer(str(blob), str(dest / str(index)), mode="overlay")
        for index, blob in enumerate(blobs)
    ]
    SUMMARY["size"] = sum(result.size for result in results)
    SUMMARY["entries"] = sum(result.entries for result in results)


def _umoci(cache: Path, dest: Path) -> None:
    subprocess.run(
        ["umoci", "unpack", "--image", f"{cache / 'oci'}:bench", str(dest)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _adhoc(module: str, args: dict[str, str]) -> None:
    """``ansible localhost -m MODULE -a JSON`` against this collection; fails loudly."""
    cmd = ["ansible", "localhost", "-c", "local", "-i", "localhost,", "-m", module]
    cmd += ["-a", json.dumps(args)] if args else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(), check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")


def _module_runs(cache: Path, work: Path) -> dict[str, float]:
    """The modules as a playbook runs them, and an ad-hoc ping for Ansible's own cost."""
    store = str(work / "store")
    image = {"name": "bench", "source": "oci", "path": str(cache / "oci"), "source_ref": "bench",
             "store": store}  # fmt: skip
    unpack = {"image": "bench", "dest": str(work / "module-flat"), "store": store}
    return {
        "ping": timed("ad-hoc ansible.builtin.ping", lambda: _adhoc("ansible.builtin.ping", {})),
        "module import": timed(
            "ad-hoc lapis.layers.image (import, 4 layers)",
            lambda: _adhoc("lapis.layers.image", image),
        ),
        "module flat": timed(
            "ad-hoc lapis.layers.image_unpack (flat)",
            lambda: _adhoc("lapis.layers.image_unpack", unpack),
        ),
    }


def _one_run(cache: Path, blobs: list[Path], work: Path) -> dict[str, float]:
    """Every contender once, each into fresh directories below ``work``."""
    work.mkdir()
    layer_dirs = [str(work / "ovl" / str(index)) for index in range(len(blobs))]
    return _module_runs(cache, work) | {
        "tar": timed("tar -xzf, the 4 layers in sequence", lambda: _tar_seq(blobs, work / "tar")),
        "umoci": timed("umoci unpack", lambda: _umoci(cache, work / "umoci")),
        "overlay": timed(
            "lapis extract_layer, overlay (layer cache)", lambda: _ours_overlay(blobs, work / "ovl")
        ),
        "flat": timed(
            "lapis flatten_blobs (flat root filesystem)",
            lambda: flatten_blobs([str(blob) for blob in blobs], str(work / "flat")),
        ),
        "flat from cache": timed(
            "lapis flatten_layers (flat, from the layer cache)",
            lambda: flatten_layers(layer_dirs, str(work / "from-cache")),
        ),
    }


def _report(runs: list[dict[str, float]]) -> None:
    best = {name: min(run[name] for run in runs) for name in runs[0]}
    size, entries = SUMMARY["size"] / 1e6, SUMMARY["entries"]
    print(f"image: 4 gzip layers, {size:.0f} MB uncompressed, {entries} tar members")
    print(f"load average after measuring: {os.getloadavg()[0]:.2f} (2 cores, shared)")
    print(f"best of {len(runs)} run(s): tar -xzf {best['tar']:.2f} s, umoci {best['umoci']:.2f} s")
    print("ratios (best of runs; below 1.00x means faster than the peer tool):")
    for name in ("overlay", "flat", "flat from cache"):
        ours = best[name]
        print(
            f"  {name:<16} {ours:6.2f} s  {ours / best['umoci']:5.2f}x umoci unpack"
            f"  {ours / best['tar']:5.2f}x tar -xzf"
        )
    ping = best["ping"]
    modules = best["module import"] + best["module flat"] - 2 * ping
    print(
        f"modules (ad-hoc, minus ad-hoc ping {ping:.2f} s each): image import"
        f" {best['module import'] - ping:.2f} s (copies and checks the blobs, unpacks the"
        f" layer cache), image_unpack flat {best['module flat'] - ping:.2f} s;"
        f" together {modules:.2f} s = {modules / best['umoci']:.2f}x umoci unpack"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=os.environ.get("LAPIS_BENCH_CACHE", ""))
    parser.add_argument("--runs", type=int, default=1, help="repeat and keep the best")
    parser.add_argument("--keep", action="store_true", help="keep the unpacked trees")
    args = parser.parse_args()
    cache = Path(args.cache or "/var/tmp/lapis-bench-unpack")
    blobs = prepare(cache)
    for blob in blobs:  # the blobs in the page cache, as for every contender
        blob.read_bytes()

    work = cache / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    work.mkdir()
    runs = []
    try:
        print("unpacking (fresh directories, nothing deleted until the end):")
        for index in range(max(1, args.runs)):
            runs.append(_one_run(cache, blobs, work / str(index)))
    finally:
        if not args.keep:
            print(f"removing {work} ...", flush=True)
            shutil.rmtree(work, ignore_errors=True)
    _report(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
