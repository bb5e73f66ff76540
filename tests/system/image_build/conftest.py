"""Fixtures for the build tests: a private store with static busybox, buildah, podman.

The base image is a real OCI layout written by ``playbooks/files/busybox_oci_layout.py``
(Debian package busybox-static) and imported with the store's own import code. buildah
and podman get private storage (vfs) under ``tmp_path`` and are cleaned up by the
finalizers, also when a test fails.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.image_import import (
    import_image,
    open_source,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store

REPO = Path(__file__).resolve().parents[3]
LAYOUT_SCRIPT = REPO / "playbooks" / "files" / "busybox_oci_layout.py"
BASE = "localhost/lapis-test/busybox:1"

Tool = Callable[..., str]


def make_layout(dest: Path) -> Path:
    """An OCI layout of static busybox at ``dest`` (tag ``test``)."""
    if not Path("/bin/busybox").exists():
        pytest.skip("/bin/busybox is missing: install the Debian package busybox-static")
    spec = importlib.util.spec_from_file_location("busybox_oci_layout", LAYOUT_SCRIPT)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {LAYOUT_SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_layout(dest, module.parse_args([str(dest), "--tag", "test"]))
    return dest


@pytest.fixture
def base_layout(tmp_path: Path) -> Path:
    return make_layout(tmp_path / "busybox-layout")


@pytest.fixture
def store(tmp_path: Path, base_layout: Path) -> Iterator[Path]:
    """A store holding the busybox base as ``BASE``; build runtime state swept afterwards."""
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")
    path = tmp_path / "store"
    import_image(Store(str(path)), BASE, open_source("oci", str(base_layout), "test"))
    yield path
    runtime_root = path / "build" / "runtime"
    if runtime_root.is_dir():
        for child in runtime_root.iterdir():
            subprocess.run(
                ["runc", "--root", str(runtime_root), "delete", "--force", child.name],
                capture_output=True,
                check=False,
            )
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    for line in mounts:
        target = line.split()[4]
        if target.startswith(str(path)):
            subprocess.run(["umount", "-l", target], check=False)


def _tool(name: str, base: list[str]) -> Tool:
    def run(*args: str) -> str:
        proc = subprocess.run([*base, *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"{name} {' '.join(args)} failed: {proc.stderr}{proc.stdout}")
        return proc.stdout

    return run


@pytest.fixture
def containers_storage(tmp_path: Path) -> Iterator[str]:
    """A private containers-storage spec ``[vfs@root+runroot]`` for buildah/podman/skopeo."""
    root = tmp_path / "cs"
    # podman wants a run root shorter than 50 characters
    run = Path(tempfile.mkdtemp(prefix="lapis-cs-", dir="/tmp"))
    yield f"[vfs@{root / 'root'}+{run}]"
    for tool in ("buildah", "podman"):
        if shutil.which(tool):
            base = [
                tool,
                "--root",
                str(root / "root"),
                "--runroot",
                str(run),
                "--storage-driver",
                "vfs",
            ]
            if tool == "buildah":
                subprocess.run([*base, "rm", "--all"], capture_output=True, check=False)
            else:
                subprocess.run([*base, "rm", "--all", "--force"], capture_output=True, check=False)
            subprocess.run([*base, "rmi", "--all", "--force"], capture_output=True, check=False)
    for path in (root, run):
        subprocess.run(["umount", "-R", "-l", str(path)], capture_output=True, check=False)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def buildah(containers_storage: str) -> Tool:
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed")
    root, run = containers_storage[5:-1].split("+")
    return _tool(
        "buildah", ["buildah", "--root", root, "--runroot", run, "--storage-driver", "vfs"]
    )


@pytest.fixture
def podman(containers_storage: str) -> Tool:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    root, run = containers_storage[5:-1].split("+")
    return _tool(
        "podman",
        [
            "podman",
            "--root",
            root,
            "--runroot",
            run,
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
        ],
    )


@pytest.fixture
def skopeo() -> Tool:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    return _tool("skopeo", ["skopeo"])
