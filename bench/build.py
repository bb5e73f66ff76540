# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Benchmark: ``lapis.layers.image_build`` beside ``buildah bud --layers --runtime runc``.

Run through ``bench/build`` (which picks the venv's Python). One Dockerfile on the
static busybox base: a COPY of a ~50 MB context (half random, half text), then
several RUN steps and config steps. Each round builds it cold (fresh store with
only the base imported / fresh buildah storage with only the base pulled) and
then again with nothing changed (cached rebuild), with our module run ad hoc
(``ansible localhost -m lapis.layers.image_build``) and with buildah (overlay
storage driver in a private root). An ad-hoc ``ansible.builtin.ping`` is timed in
the same round, so the module's own cost (ad-hoc build minus ping) is shown too.
The machine is shared: figures are noisy, medians of the rounds are printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = REPO / "build" / "collections"
sys.path.insert(0, str(COLLECTIONS))

from ansible_collections.lapis.layers.plugins.module_utils.image_import import (  # noqa: E402
    import_image,
    open_source,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store  # noqa: E402
from ansible_collections.lapis.layers.tests.system.conftest import ansible_env  # noqa: E402

BASE = "localhost/bench/busybox:1"
SEED = 20261203
DOCKERFILE = f"""\
FROM {BASE}
ENV APP=/app
COPY data /app/data
RUN echo one > /one && ls /app/data | wc -l > /app/count
RUN mkdir -p /opt/tool && echo two > /opt/tool/two && rm -f /bin/true
RUN cat /app/count /one > /summary
WORKDIR /app
CMD ["cat", "/summary"]
"""


def make_context(root: Path, megabytes: int) -> None:
    if (root / ".complete").exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(SEED)
    data = root / "data"
    total = megabytes << 20
    written = 0
    index = 0
    while written < total:
        folder = data / f"d{index // 50:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        size = rng.randint(20_000, 400_000)
        if index % 2:
            payload = rng.randbytes(size)
        else:
            words = [
                rng.choice(("alpha", "beta", "gamma", "delta", "lapis"))
                for _word in range(size // 6)
            ]
            payload = " ".join(words).encode()[:size]
        (folder / f"f{index:05d}.bin").write_bytes(payload)
        written += len(payload)
        index += 1
    (root / "Dockerfile").write_text(DOCKERFILE)
    (root / ".complete").write_text(f"{index} files, {written} bytes\n")


def base_layout(work: Path) -> Path:
    spec = importlib.util.spec_from_file_location(
        "busybox_oci_layout", REPO / "playbooks" / "files" / "busybox_oci_layout.py"
    )
    if spec is None or spec.loader is None:
        raise RuntimeError("cannot load the busybox layout writer")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dest = work / "busybox-layout"
    if not dest.exists():
        module.write_layout(dest, module.parse_args([str(dest), "--tag", "test"]))
    return dest


def adhoc(module: str, args: dict[str, object]) -> float:
    cmd = ["ansible", "localhost", "-c", "local", "-i", "localhost,", "-m", module]
    cmd += ["-a", json.dumps(args)] if args else []
    start = time.monotonic()
    proc = subprocess.run(cmd, env=ansible_env(), capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"{module} failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def ours(context: Path, layout: Path, work: Path) -> tuple[float, float]:
    store = Path(tempfile.mkdtemp(prefix="ours-", dir=work))
    import_image(Store(str(store)), BASE, open_source("oci", str(layout), "test"))
    args: dict[str, object] = {
        "name": "localhost/bench/out:1",
        "path": str(context),
        "store": str(store),
    }
    cold = adhoc("lapis.layers.image_build", args)
    cached = adhoc("lapis.layers.image_build", args)
    return cold, cached


def buildah(context: Path, layout: Path, work: Path) -> tuple[float, float]:
    root = Path(tempfile.mkdtemp(prefix="buildah-", dir=work))
    run = Path(tempfile.mkdtemp(prefix="lapis-bb-", dir="/tmp"))
    base = ["buildah", "--root", str(root), "--runroot", str(run), "--storage-driver", "overlay"]
    try:
        out = subprocess.run(
            [*base, "pull", "-q", f"oci:{layout}:test"], capture_output=True, text=True, check=True
        ).stdout
        subprocess.run([*base, "tag", out.strip().splitlines()[-1], BASE], check=True)
        bud = [
            *base,
            "bud",
            "--layers",
            "--runtime",
            "runc",
            "--isolation",
            "oci",
            "--pull-never",
            "-q",
            "-t",
            "localhost/bench/out:1",
            str(context),
        ]
        times = []
        for _round in range(2):
            start = time.monotonic()
            subprocess.run(bud, capture_output=True, check=True)
            times.append(time.monotonic() - start)
        return times[0], times[1]
    finally:
        subprocess.run([*base, "rm", "--all"], capture_output=True, check=False)
        subprocess.run([*base, "rmi", "--all", "--force"], capture_output=True, check=False)
        subprocess.run(["umount", "-R", "-l", str(root)], capture_output=True, check=False)
        shutil.rmtree(run, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/var/tmp/lapis-bench-build")
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    options = parser.parse_args()
    work = Path(options.work)
    work.mkdir(parents=True, exist_ok=True)
    context = work / "context"
    make_context(context, options.megabytes)
    layout = base_layout(work)
    runs = work / "runs"
    runs.mkdir(exist_ok=True)
    rows: dict[str, list[float]] = {
        key: [] for key in ("ours_cold", "ours_cached", "buildah_cold", "buildah_cached", "ping")
    }
    for _round in range(options.rounds):
        rows["ping"].append(adhoc("ansible.builtin.ping", {}))
        cold, cached = ours(context, layout, runs)
        rows["ours_cold"].append(cold)
        rows["ours_cached"].append(cached)
        cold, cached = buildah(context, layout, runs)
        rows["buildah_cold"].append(cold)
        rows["buildah_cached"].append(cached)
    med = {key: statistics.median(values) for key, values in rows.items()}
    print(f"context: {(context / '.complete').read_text().strip()}; rounds: {options.rounds}")
    print(f"{'':24}{'cold':>10}{'cached':>10}")
    print(f"{'buildah bud --layers':24}{med['buildah_cold']:10.2f}{med['buildah_cached']:10.2f}")
    print(f"{'image_build (ad hoc)':24}{med['ours_cold']:10.2f}{med['ours_cached']:10.2f}")
    own_cold, own_cached = med["ours_cold"] - med["ping"], med["ours_cached"] - med["ping"]
    print(
        f"{'image_build - ping':24}{own_cold:10.2f}{own_cached:10.2f}   (ping {med['ping']:.2f} s)"
    )
    print("ratios buildah/ours (>1: we are faster):")
    print(
        f"  whole module: cold {med['buildah_cold'] / med['ours_cold']:.2f}x, "
        f"cached {med['buildah_cached'] / med['ours_cached']:.2f}x"
    )
    print(
        f"  module minus ping: cold {med['buildah_cold'] / own_cold:.2f}x, "
        f"cached {med['buildah_cached'] / own_cached:.2f}x"
    )
    print(
        "raw seconds per round:",
        json.dumps({k: [round(v, 2) for v in vals] for k, vals in rows.items()}),
    )
    if not options.keep:
        shutil.rmtree(runs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
