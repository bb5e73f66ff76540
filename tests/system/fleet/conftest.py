"""A fleet of three hosts: one OpenSSH server each on 127.0.0.2, .3 and .4 (port 2202).

Each sshd is Debian's ``/usr/sbin/sshd -D -f <own config>`` with its own host key, key
authentication only (a client key made for the session), and its own pid file and log in a
temp directory. The hosts are this machine reached over real SSH, each with its own image
store directory (inventory variable ``lapis_host_store``), so their containers, runtime
roots and cgroups stay apart. Teardown stops every container of the three stores, unmounts
their rootfs directories and stops each sshd with its sessions, by pid, also when a test
failed.

Images are built offline: ``playbooks/files/busybox_oci_layout.py`` writes release 1 (static
busybox, users); each further release adds one layer on top of the previous one.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.lapis.layers.tests.system.containers.conftest import sweep

REPO = Path(__file__).resolve().parents[3]
LAYOUT_SCRIPT = REPO / "playbooks" / "files" / "busybox_oci_layout.py"
HOSTS = {"h2": "127.0.0.2", "h3": "127.0.0.3", "h4": "127.0.0.4"}
PORT = 2202
SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


@dataclass
class SshHost:
    """One sshd: its name, address, store directory, config and process."""

    name: str
    address: str
    store: Path
    workdir: Path
    process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stop(self) -> None:
        """Stop the sshd and every session it forked (by pid, children first)."""
        if self.process is None:
            return
        kill_tree(self.process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self.process = None


def descendants(pid: int) -> list[int]:
    """Pids of the processes below ``pid`` (from /proc), deepest first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        for child in children.get(current, []):
            found.append(child)
            todo.append(child)
    return list(reversed(found))


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants: an sshd and the sessions it forked."""
    for target in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)


def _wait_for_port(address: str, port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"sshd on {address} exited: {log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=1):
            return
        time.sleep(0.1)
    raise AssertionError(f"sshd on {address}:{port} did not start listening")


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def start_sshd(host: SshHost, client_pub: Path) -> None:
    """Write the host's sshd config and key, start ``sshd -D``, wait until it listens."""
    host.workdir.mkdir(parents=True, exist_ok=True)
    key = host.workdir / "ssh_host_ed25519_key"
    if not key.exists():
        _keygen(key)
    authorized = host.workdir / "authorized_keys"
    shutil.copy(client_pub, authorized)
    authorized.chmod(0o600)
    config = host.workdir / "sshd_config"
    config.write_text(
        f"ListenAddress {host.address}:{PORT}\n"
        f"HostKey {key}\n"
        f"PidFile {host.workdir / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {authorized}\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "MaxSessions 50\n"
        "MaxStartups 50\n"
        f"Subsystem sftp {SFTP_SERVER}\n"
    )
    log = host.workdir / "sshd.log"
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    host.process = subprocess.Popen(
        [SSHD, "-D", "-f", str(config), "-E", str(log)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_port(host.address, PORT, host.process, log)


@dataclass
class Fleet:
    """The three hosts, the client key and the inventory written for them."""

    hosts: dict[str, SshHost]
    key: Path
    inventory: Path
    workdir: Path


def write_inventory(path: Path, hosts: dict[str, SshHost], key: Path, controlpath: Path) -> None:
    inventory: dict[str, Any] = {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_port": PORT,
                "ansible_ssh_private_key_file": str(key),
                "ansible_ssh_common_args": (
                    "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                    f"-o ControlPath={controlpath}/%C"
                ),
                "ansible_python_interpreter": sys.executable,
                # The machine has what the modules need already (requirements/apt.txt); the
                # package task runs and finds them, the boot-time module list is not written.
                "lapis_host_packages": ["runc", "fuse3"],
                "lapis_host_persist_kernel_modules": False,
                "lapis_images_store": "{{ lapis_host_store }}",
                "lapis_containers_store": "{{ lapis_host_store }}",
                "lapis_images_chunk_size": "256k",
            },
            "children": {
                "servers": {
                    "hosts": {
                        name: {"ansible_host": host.address, "lapis_host_store": str(host.store)}
                        for name, host in hosts.items()
                    }
                },
                "routers": {"hosts": {}},
            },
        }
    }
    path.write_text(json.dumps(inventory, indent=1))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Three sshd hosts on 127.0.0.2-4:2202 with their stores; all stopped at the end."""
    for tool in (SSHD, SFTP_SERVER, shutil.which("ssh-keygen") or "/nonexistent"):
        if not Path(tool).exists():
            pytest.skip(
                f"{tool} is missing: install the Debian packages openssh-server and -client"
            )
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")
    workdir = tmp_path_factory.mktemp("fleet")
    key = workdir / "client_key"
    _keygen(key)
    hosts = {
        name: SshHost(name, address, workdir / "stores" / name, workdir / "sshd" / name)
        for name, address in HOSTS.items()
    }
    controlpath = workdir / "cp"
    controlpath.mkdir()
    inventory = workdir / "inventory.json"
    write_inventory(inventory, hosts, key, controlpath)
    try:
        for host in hosts.values():
            start_sshd(host, key.with_suffix(".pub"))
        yield Fleet(hosts, key, inventory, workdir)
    finally:
        for host in hosts.values():
            host.stop()
        for host in hosts.values():
            if host.store.exists():
                sweep(host.store)


# -- images: release 1 from the busybox layout writer, each release one layer more ---------


def _layout_module() -> Any:
    spec = importlib.util.spec_from_file_location("busybox_oci_layout", LAYOUT_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _read_json(layout: Path, digest: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((layout / "blobs" / "sha256" / digest[7:]).read_bytes())
    return doc


def release_layer(release: int, size: int) -> bytes:
    """A gzip layer holding ``/srv/release`` and ``size`` bytes of incompressible data."""
    data = hashlib.shake_256(f"release-{release}".encode()).digest(size)
    buffer = tarfile.io.BytesIO()  # type: ignore[attr-defined]
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in (("srv/release", f"{release}\n".encode()), ("srv/payload", data)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, 1_700_000_000
            tar.addfile(info, tarfile.io.BytesIO(content))  # type: ignore[attr-defined]
    return buffer.getvalue()


def add_release(base: Path, dest: Path, release: int, size: int, tag: str) -> dict[str, Any]:
    """Copy layout ``base`` to ``dest`` with one more layer; returns the new layer's descriptor."""
    shutil.copytree(base, dest)
    index = json.loads((dest / "index.json").read_text())
    manifest = _read_json(dest, index["manifests"][0]["digest"])
    config = _read_json(dest, manifest["config"]["digest"])
    tar = release_layer(release, size)
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
             **_write_blob(dest, gzip.compress(tar, mtime=0))}  # fmt: skip
    config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(tar).hexdigest())
    config["config"]["Labels"] = {"org.example.release": str(release)}
    config_blob = _write_blob(dest, json.dumps(config, sort_keys=True).encode())
    manifest["config"] = {**manifest["config"], **config_blob}
    manifest["layers"].append(layer)
    entry = _write_blob(dest, json.dumps(manifest, sort_keys=True).encode())
    index["manifests"] = [{"mediaType": manifest["mediaType"], **entry,
                           "annotations": {"org.opencontainers.image.ref.name": tag}}]  # fmt: skip
    (dest / "index.json").write_text(json.dumps(index, sort_keys=True))
    return {"layer": layer, "config": manifest["config"], "manifest": entry}


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """Three releases of one image: 1 = busybox + users, 2 and 3 add a layer each."""
    if not Path("/bin/busybox").exists():
        pytest.skip("/bin/busybox is missing: install the Debian package busybox-static")
    out = tmp_path_factory.mktemp("releases")
    writer = _layout_module()
    first = out / "release-1"
    writer.write_layout(first, writer.parse_args([str(first), "--tag", "1"]))
    found: dict[int, dict[str, Any]] = {1: {"path": first}}
    for release in (2, 3):
        path = out / f"release-{release}"
        found[release] = {
            "path": path,
            **add_release(found[release - 1]["path"], path, release, 300_000, str(release)),
        }
    return found
