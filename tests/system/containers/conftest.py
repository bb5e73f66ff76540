"""Fixtures for the container tests: a private store with a busybox image, and a sweeper.

The image is a real OCI layout written by ``playbooks/files/busybox_oci_layout.py`` from the
Debian package busybox-static, imported with the image store's own import code. Every test
gets its own store under ``tmp_path`` and so its own runtime root
(``<store>/containers/.runtime``); the finalizer kills and deletes whatever the test left
running there, stops the monitors by pid and unmounts every container rootfs, also when the
test failed.
"""

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils import containers as ct
from ansible_collections.lapis.layers.plugins.module_utils.image_import import (
    import_image,
    open_source,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store

REPO = Path(__file__).resolve().parents[3]
LAYOUT_SCRIPT = REPO / "playbooks" / "files" / "busybox_oci_layout.py"
IMAGE = "localhost/lapis-test/busybox:1"
# Busybox's sh ignores SIGTERM as pid 1 unless it traps it: this one exits 7 on SIGTERM.
TRAP_LOOP = "trap 'echo bye; exit 7' TERM; echo up; while :; do sleep 0.1; done"


def load_layout_module():
    spec = importlib.util.spec_from_file_location("busybox_oci_layout", LAYOUT_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_layout(dest: Path, *extra: str) -> Path:
    """An OCI layout of static busybox at ``dest`` (tag ``test``)."""
    if not Path("/bin/busybox").exists():
        pytest.skip("/bin/busybox is missing: install the Debian package busybox-static")
    layout = load_layout_module()
    layout.write_layout(dest, layout.parse_args([str(dest), "--tag", "test", *extra]))
    return dest


def import_layout(store: Path, reference: str, layout: Path) -> None:
    import_image(Store(str(store)), reference, open_source("oci", str(layout), "test"))


def sweep(store: Path) -> None:
    """Kill and delete every container of ``store``, stop monitors, unmount rootfs dirs."""
    root = store / "containers"
    runtime_root = root / ".runtime"
    if runtime_root.is_dir():
        listing = subprocess.run(
            ["runc", "--root", str(runtime_root), "list", "--format", "json"],
            capture_output=True,
            text=True,
            check=False,
        )
        for item in json.loads(listing.stdout or "null") or []:
            for args in (["kill", item["id"], "KILL"], ["delete", "--force", item["id"]]):
                subprocess.run(
                    ["runc", "--root", str(runtime_root), *args], capture_output=True, check=False
                )
    for pid_file in root.glob("*/monitor.pid"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"conmon" in cmdline or b"python" in cmdline:  # not a recycled pid
                os.kill(pid, signal.SIGKILL)
    for rootfs in root.glob("*/rootfs"):
        if ct.is_mounted(rootfs):
            subprocess.run(["umount", "-l", str(rootfs)], check=False)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "store"
    path.mkdir()
    yield path
    sweep(path)


@pytest.fixture
def busybox(store: Path, tmp_path: Path) -> str:
    """Reference of a busybox image in ``store`` (Cmd ``sh``)."""
    import_layout(store, IMAGE, make_layout(tmp_path / "layout"))
    return IMAGE


@pytest.fixture
def runc_bin() -> str:
    found = shutil.which("runc")
    if not found:
        pytest.skip("runc is not installed")
    return found
