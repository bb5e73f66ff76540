"""Fleet benchmark: roll a two-release image history out to three hosts over real SSH.

Three OpenSSH servers on 127.0.0.2, .3 and .4 (port 2202, the fleet tests' helpers) stand
for three hosts; each host gets two fresh stores per round. Release 1 is static busybox
plus a base layer of ``--base-mb`` MB of incompressible data, release 2 adds a layer of
``--app-mb`` MB on top. Both methods roll out release 1, then release 2, with forks 3:

* ``image_copy``: ad-hoc ``lapis.layers.image_copy`` from the OCI layouts on the
  controller; each host is sent only the blobs it lacks;
* ``tar+copy+load``: the release as a docker-archive (what ``docker save`` and
  ``skopeo copy ... docker-archive:`` write: uncompressed layers), sent with
  ``ansible.builtin.copy`` and loaded with ``lapis.layers.image`` (``source:
  docker-archive``). The archives are written before the clock starts.

Bytes are what went to the hosts (``bytes_sent`` of image_copy; the archive size times
three for the copies). Wall times are of the ad-hoc commands; an ad-hoc
``ansible.builtin.ping`` of the three hosts is timed in the same round and printed as
Ansible's own cost. Medians of ``--rounds`` rounds. Not part of ``make test``; the two
cores of the machine may be shared, so times are noisy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "build" / "collections"))

# pylint: disable=wrong-import-position
from ansible_collections.lapis.layers.tests.system.conftest import ansible_env  # noqa: E402
from ansible_collections.lapis.layers.tests.system.containers.conftest import (  # noqa: E402
    sweep,
)
from ansible_collections.lapis.layers.tests.system.fleet.conftest import (  # noqa: E402
    HOSTS,
    PORT,
    SshHost,
    _keygen,
    _layout_module,
    add_release,
    start_sshd,
)

IMAGE = "localhost/bench/app"


def build_releases(out: Path, base_mb: int, app_mb: int) -> dict[int, Path]:
    """Release 1 = busybox + base layer; release 2 = release 1 + app layer (OCI layouts)."""
    writer = _layout_module()
    busybox = out / "busybox"
    writer.write_layout(busybox, writer.parse_args([str(busybox), "--tag", "0"]))
    add_release(busybox, out / "release-1", 1, base_mb << 20, "1")
    add_release(out / "release-1", out / "release-2", 2, app_mb << 20, "2")
    return {1: out / "release-1", 2: out / "release-2"}


def docker_archive(layout: Path, tag: str, dest: Path) -> Path:
    subprocess.run(
        ["skopeo", "copy", "-q", f"oci:{layout}:{tag}", f"docker-archive:{dest}:{IMAGE}:{tag}"],
        check=True,
    )
    return dest


def write_inventory(path: Path, hosts: dict[str, SshHost], key: Path, work: Path) -> None:
    inventory = {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_port": PORT,
                "ansible_ssh_private_key_file": str(key),
                "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                f"-o UserKnownHostsFile=/dev/null -o ControlPath={work}/cp-%C",
                "ansible_python_interpreter": sys.executable,
            },
            "children": {
                "servers": {
                    "hosts": {
                        name: {"ansible_host": host.address, "bench_dir": str(host.store)}
                        for name, host in hosts.items()
                    }
                }
            },
        }
    }
    path.write_text(json.dumps(inventory))


class Runner:
    """Ad-hoc ansible against the three hosts; returns seconds and per-host results."""

    def __init__(self, inventory: Path, work: Path) -> None:
        self.inventory = inventory
        self.work = work
        self.env = ansible_env()
        self.env.update(ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_PIPELINING="True")
        self.count = 0

    def adhoc(self, module: str, args: dict[str, Any]) -> tuple[float, dict[str, dict]]:
        self.count += 1
        tree = self.work / f"tree-{self.count}"
        cmd = ["ansible", "servers", "-f", "3", "-i", str(self.inventory), "-t", str(tree),
               "-m", module]  # fmt: skip
        cmd += ["-a", json.dumps(args)] if args else []
        started = time.monotonic()
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=False)
        seconds = time.monotonic() - started
        results = (
            {p.name: json.loads(p.read_text()) for p in tree.iterdir()} if tree.is_dir() else {}
        )
        if proc.returncode != 0 or len(results) != len(HOSTS):
            raise SystemExit(f"{module} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
        return seconds, results


def one_round(runner: Runner, releases: dict[int, Path], tars: dict[int, Path], n: int) -> dict:
    """Both methods, release 1 then release 2, into fresh stores named for round ``n``."""
    for host_dir in runner.work.glob("hosts/*"):
        (host_dir / f"tars-{n}").mkdir()  # the hosts are this machine
    figures: dict[str, Any] = {"ping": runner.adhoc("ansible.builtin.ping", {})[0]}
    for release in (1, 2):
        seconds, results = runner.adhoc("lapis.layers.image_copy", {
            "src": str(releases[release]), "name": f"{IMAGE}:{release}",
            "store": f"{{{{ bench_dir }}}}/copy-{n}", "chunk_size": "32m"})  # fmt: skip
        sent = sum(r["bytes_sent"] for r in results.values())
        figures[f"copy{release}"] = (seconds, sent)
    for release in (1, 2):
        dest = f"{{{{ bench_dir }}}}/tars-{n}/release-{release}.tar"
        sent = {"src": str(tars[release]), "dest": dest, "mode": "0600"}
        copy_s, _res = runner.adhoc("ansible.builtin.copy", sent)
        load_s, _res = runner.adhoc("lapis.layers.image", {
            "name": f"{IMAGE}:{release}", "source": "docker-archive", "path": dest,
            "store": f"{{{{ bench_dir }}}}/tar-{n}"})  # fmt: skip
        figures[f"tar{release}"] = (copy_s, load_s, tars[release].stat().st_size * len(HOSTS))
    return figures


def report(rounds: list[dict], base_mb: int, app_mb: int) -> None:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    ping = med([r["ping"] for r in rounds])
    print(f"fleet bench: 3 hosts over SSH (forks 3), {len(rounds)} round(s), medians; release 1 "
          f"= busybox + {base_mb} MiB layer, release 2 = + {app_mb} MiB layer")  # fmt: skip
    print(f"ad-hoc ansible.builtin.ping of the 3 hosts: {ping:.2f} s (Ansible's own cost)")
    print(f"{'':12}{'image_copy':>24}{'tar+copy+load':>36}{'ratio (tar/copy)':>24}")
    totals = {"cb": 0, "cs": 0.0, "tb": 0, "ts": 0.0}
    for release in (1, 2):
        c_s = med([r[f"copy{release}"][0] for r in rounds])
        c_b = int(med([r[f"copy{release}"][1] for r in rounds]))
        copy_s = med([r[f"tar{release}"][0] for r in rounds])
        load_s = med([r[f"tar{release}"][1] for r in rounds])
        t_b = int(med([r[f"tar{release}"][2] for r in rounds]))
        t_s = copy_s + load_s
        totals["cb"] += c_b
        totals["cs"] += c_s
        totals["tb"] += t_b
        totals["ts"] += t_s
        print(f"release {release}:  {c_b:>12,} B {c_s:6.2f} s   {t_b:>12,} B {t_s:6.2f} s "
              f"(copy {copy_s:.2f} + load {load_s:.2f})   bytes x{t_b / max(c_b, 1):.2f}, "
              f"time x{t_s / c_s:.2f}")  # fmt: skip
    print(f"both:       {totals['cb']:>12,} B {totals['cs']:6.2f} s   {totals['tb']:>12,} B "
          f"{totals['ts']:6.2f} s   bytes x{totals['tb'] / max(totals['cb'], 1):.2f}, "
          f"time x{totals['ts'] / totals['cs']:.2f}")  # fmt: skip
    net_c = totals["cs"] - 2 * ping
    net_t = totals["ts"] - 4 * ping
    print(f"minus one ping per ad-hoc command: image_copy {net_c:.2f} s, tar+copy+load "
          f"{net_t:.2f} s, time x{net_t / max(net_c, 0.01):.2f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--base-mb", type=int, default=64)
    parser.add_argument("--app-mb", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    for tool in ("skopeo", "/usr/sbin/sshd", "/bin/busybox"):
        if shutil.which(tool) is None and not Path(tool).exists():
            raise SystemExit(f"{tool} is missing (skopeo, openssh-server, busybox-static)")
    work = Path(tempfile.mkdtemp(prefix="lapis-bench-fleet-"))
    hosts = {name: SshHost(name, addr, work / "hosts" / name, work / "sshd" / name)
             for name, addr in HOSTS.items()}  # fmt: skip
    try:
        releases = build_releases(work / "images", args.base_mb, args.app_mb)
        tars = {r: docker_archive(releases[r], str(r), work / f"release-{r}.tar") for r in (1, 2)}
        key = work / "client_key"
        _keygen(key)
        for host in hosts.values():
            host.store.mkdir(parents=True)
            start_sshd(host, key.with_suffix(".pub"))
        inventory = work / "inventory.json"
        write_inventory(inventory, hosts, key, work)
        runner = Runner(inventory, work)
        rounds = [one_round(runner, releases, tars, n) for n in range(args.rounds)]
        report(rounds, args.base_mb, args.app_mb)
    finally:
        for host in hosts.values():
            host.stop()
            for store in host.store.glob("*-*"):
                sweep(store)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
