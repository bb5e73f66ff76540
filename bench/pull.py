"""Pull benchmark: our registry client beside ``skopeo copy`` on one ~200 MB, 4-layer image.

A local docker-registry (TLS + htpasswd, as in the system tests) serves an image of four
gzip layers of ~50 MB each (text-like content, ~40 MB of blobs in all). Each round uses
fresh destination names (never deleting a tree right before timing the next):

* ``skopeo copy docker://... oci:DIR`` into an empty OCI layout (the peer);
* our client's ``pull`` into an empty OCI layout (the fetch, same work as skopeo);
* ``pull_to_store`` into an empty image store, as ``lapis.layers.image`` does it: its
  fetch (blobs downloaded, verified, fsynced into the store) and its import (every layer
  unpacked and checked against its diff_id, manifest stored, tag written) are reported
  separately from ``Transfer.fetch_seconds`` and ``Transfer.import_seconds``;
* ad-hoc ``ansible localhost -m lapis.layers.image`` into an empty store, beside an
  ad-hoc ``ansible.builtin.ping``: the module's whole cost and that minus Ansible's own.

Medians of ``--rounds`` runs are printed with ratios to skopeo. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "build" / "collections"))

# pylint: disable=wrong-import-position
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store  # noqa: E402
from ansible_collections.lapis.layers.plugins.module_utils.registry_client import (  # noqa: E402
    RegistryClient,
    RegistryOptions,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_layout import (  # noqa: E402
    OciLayout,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_reference import (  # noqa: E402
    parse_reference,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_store import (  # noqa: E402
    pull_to_store,
)
from ansible_collections.lapis.layers.tests.system.conftest import ansible_env  # noqa: E402
from ansible_collections.lapis.layers.tests.system.registry.conftest import (  # noqa: E402
    PASSWORD,
    USER,
    bcrypt_hash,
    make_image,
    make_pki,
    start_registry,
    stop_process,
)

PORT = 5036
Figures = dict[str, list[float]]
LABELS = {
    "skopeo": "skopeo copy -> empty OCI layout",
    "fetch": "ours: client pull -> empty OCI layout",
    "store_fetch": "ours: image pull, fetch into store",
    "store_unpack": "ours: image pull, unpack + diff_ids",
    "store": "ours: image pull, whole (python)",
    "module": "ad-hoc lapis.layers.image (whole)",
    "module_fetch": "  in it: fetch into store",
    "module_unpack": "  in it: unpack + diff_ids",
    "ping": "ad-hoc ansible.builtin.ping",
    "module_minus_ping": "ad-hoc image minus ping",
}
WORDS = [f"word{i:03d}" for i in range(500)]


def layer_files(seed: int, megabytes: int) -> dict[str, bytes | str]:
    """~``megabytes`` of text-like files (gzip makes about a quarter of it)."""
    rng = random.Random(seed)
    files: dict[str, bytes | str] = {}
    total, index = 0, 0
    while total < megabytes << 20:
        size = rng.randint(4 << 10, 256 << 10)
        words = rng.choices(WORDS, k=size // 9)
        noise = rng.randbytes(size // 64)
        data = (" ".join(words)).encode() + noise
        files[f"usr/share/bench{seed}/d{index // 100:03d}/f{index:05d}"] = data
        total += len(data)
        index += 1
    return files


def build_image(cache: Path) -> Path:
    layout = cache / "layout"
    if (layout / "index.json").exists():
        return layout
    tmp = cache / f"layout-tmp-{os.getpid()}"
    print("building the ~200 MB 4-layer image (once; cached) ...", flush=True)
    make_image(tmp, "bench", [layer_files(seed, 50) for seed in range(4)])
    tmp.rename(layout)
    return layout


def timed(func: Callable[[], object]) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stdout}{proc.stderr}")
    return proc.stdout


def module_pull(args: dict[str, object], env: dict[str, str], figures: Figures) -> None:
    """Ad-hoc ``lapis.layers.image`` into an empty store; its own fetch/unpack times too."""
    started = time.perf_counter()
    out = run(adhoc("lapis.layers.image", args), env)
    figures["module"].append(time.perf_counter() - started)
    result = json.loads(out[out.index("{") :])
    figures["module_fetch"].append(result["transfer"]["fetch_seconds"])
    figures["module_unpack"].append(result["transfer"]["import_seconds"])


def adhoc(module: str, args: dict[str, object]) -> list[str]:
    """``ansible localhost -m MODULE [-a JSON]`` against this collection."""
    cmd = ["ansible", "localhost", "-c", "local", "-i", "localhost,", "-m", module]
    return cmd + (["-a", json.dumps(args)] if args else [])


def pull_in_store(store: Store, name: str, options: RegistryOptions, figures: Figures) -> None:
    """``pull_to_store`` into an empty store: fetch and import (unpack) times recorded."""
    started = time.perf_counter()
    done = pull_to_store(store, name, options)
    figures["store"].append(time.perf_counter() - started)
    figures["store_fetch"].append(done.fetch_seconds)
    figures["store_unpack"].append(done.import_seconds)
    if len(done.layers_unpacked) != 4:
        raise SystemExit(f"pull_to_store unpacked {done.layers_unpacked}, expected 4 layers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/lapis-registry-bench-cache"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    layout = build_image(args.cache)
    blob_bytes = sum(p.stat().st_size for p in (layout / "blobs/sha256").iterdir())
    work = Path(tempfile.mkdtemp(prefix="lapis-registry-bench-", dir="/tmp"))
    pki_dir = work / "pki"
    pki_dir.mkdir()
    pki = make_pki(pki_dir)
    base = work / "registry"
    base.mkdir()
    (base / "htpasswd").write_text(f"{USER}:{bcrypt_hash(PASSWORD)}\n")
    auth = {"htpasswd": {"realm": "bench", "path": str(base / "htpasswd")}}
    registry = start_registry(base, PORT, pki, auth, f"{USER}:{PASSWORD}")
    try:
        run(["skopeo", "--insecure-policy", "copy", *registry.tls_args("dest"),
             f"oci:{layout}:bench", f"docker://{registry.host}/bench/image:1"])  # fmt: skip
        ref = parse_reference(f"{registry.host}/bench/image:1")
        options = RegistryOptions(username=USER, password=PASSWORD, ca_path=str(pki.ca))
        module_args: dict[str, object] = {"name": str(ref), "username": USER, "password": PASSWORD}
        module_args |= {"ca_path": str(pki.ca)}
        env = ansible_env()
        figures: Figures = {key: [] for key in LABELS}
        for n in range(args.rounds):
            dest = work / f"skopeo-{n}"
            copy = ["skopeo", "--insecure-policy", "copy", *registry.tls_args("src")]
            figures["skopeo"].append(
                timed(partial(run, [*copy, f"docker://{ref}", f"oci:{dest}:1"]))
            )
            ours = OciLayout(work / f"ours-{n}")
            figures["fetch"].append(timed(partial(RegistryClient(options).pull, ref, ours)))
            pull_in_store(Store(work / f"store-{n}"), str(ref), options, figures)
            margs = {**module_args, "store": str(work / f"module-store-{n}")}
            module_pull(margs, env, figures)
            figures["ping"].append(timed(partial(run, adhoc("ansible.builtin.ping", {}), env)))
            figures["module_minus_ping"].append(figures["module"][-1] - figures["ping"][-1])
            theirs = {p.name for p in (dest / "blobs/sha256").iterdir()}
            if theirs != {p.name for p in (ours.root / "blobs/sha256").iterdir()}:
                raise SystemExit("skopeo and our pull fetched different blobs")
        report(figures, blob_bytes, args.rounds)
    finally:
        stop_process(registry.proc)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def report(figures: Figures, blob_bytes: int, rounds: int) -> None:
    skopeo_median = statistics.median(figures["skopeo"])
    print(f"\nimage: 4 layers, {blob_bytes / 1e6:.1f} MB of blobs, ~200 MB unpacked; "
          f"medians of {rounds} rounds (2 shared cores, other work running)")  # fmt: skip
    for key, label in LABELS.items():
        median = statistics.median(figures[key])
        print(f"  {label:38s} {median:7.3f} s   x{median / skopeo_median:5.2f} of skopeo")
    print(json.dumps({k: [round(v, 3) for v in vs] for k, vs in figures.items()}))


if __name__ == "__main__":
    main()
