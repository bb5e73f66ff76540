"""Images built with buildah (scratch + static busybox), exported with skopeo.

``images`` (session scope) builds three images in a private containers-storage root:

- ``base``: busybox, symlinks (relative and absolute), a hardlink, a setuid file, a file
  owned by 1000:1000, a fifo, a character device, a sticky directory, ``/opq/a``,
  ``/etc/file`` and ``/etc/dir/g``;
- ``top`` (from base): a file whiteout (``/etc/file``), a directory whiteout
  (``/etc/dir``) and an opaque directory (``/opq`` removed and made again), plus
  Cmd/Env/WorkingDir/Labels/ExposedPorts in its config;
- ``other`` (from base): one more file, so it shares the base layer with ``top``.

buildah uses the kernel overlay storage driver, whose diff records the removed directory
that was made again as an opaque directory (``.wh..wh..opq``), as Docker does.
Each image is exported as an OCI layout, an OCI archive and a docker-archive, and ``top``
also as an OCI layout with zstd layers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

BUSYBOX = Path("/bin/busybox")
NAMES = ("base", "top", "other")


def _run(*cmd: str, **kw) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout.strip()


class Builder:
    """buildah and skopeo on a private storage root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.storage = f"overlay@{root}/storage+{root}/run"
        self.buildah = ["buildah", "--root", f"{root}/storage", "--runroot", f"{root}/run",
                        "--storage-driver", "overlay"]  # fmt: skip

    def b(self, *args: str) -> str:
        return _run(*self.buildah, *args)

    def build(self, name: str, parent: str, change) -> None:
        ctr = self.b("from", "--pull-never", parent)
        mnt = Path(self.b("mount", ctr))
        try:
            change(mnt, lambda *a: self.b("config", *a, ctr))
        finally:
            self.b("umount", ctr)
        self.b("commit", "-q", ctr, f"localhost/{name}:1")
        self.b("rm", ctr)

    def export(self, name: str, out: Path) -> dict[str, Path]:
        src = f"containers-storage:[{self.storage}]localhost/{name}:1"
        paths = {
            "oci": out / f"{name}-oci",
            "oci-archive": out / f"{name}-oci.tar",
            "docker-archive": out / f"{name}-docker.tar",
        }
        _run("skopeo", "copy", "-q", src, f"oci:{paths['oci']}:{name}")
        _run("skopeo", "copy", "-q", src, f"oci-archive:{paths['oci-archive']}:{name}")
        _run("skopeo", "copy", "-q", src,
             f"docker-archive:{paths['docker-archive']}:localhost/{name}:1")  # fmt: skip
        return paths

    def cleanup(self) -> None:
        subprocess.run([*self.buildah, "rm", "-a"], capture_output=True, check=False)
        subprocess.run([*self.buildah, "rmi", "-a", "-f"], capture_output=True, check=False)
        # containers-storage leaves its overlay home bind-mounted; unmount all below root.
        mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True,
                                text=True, check=False).stdout.split()  # fmt: skip
        for target in sorted((m for m in mounts if m.startswith(str(self.root))), reverse=True):
            subprocess.run(["umount", "-l", target], check=False)


def _base(mnt: Path, config) -> None:
    for d in ("bin", "etc/dir", "opq/sub", "usr/bin", "home/user", "run", "dev"):
        (mnt / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, mnt / "bin/busybox")
    (mnt / "bin/sh").symlink_to("busybox")
    os.link(mnt / "bin/busybox", mnt / "bin/ls")
    (mnt / "etc/file").write_text("file\n")
    (mnt / "etc/dir/g").write_text("g\n")
    (mnt / "etc/abs").symlink_to("/etc/file")
    (mnt / "opq/a").write_text("a\n")
    suid = mnt / "usr/bin/suid"
    suid.write_text("#!/bin/sh\n")
    suid.chmod(0o4755)
    owned = mnt / "home/user/secret"
    owned.write_text("s\n")
    os.chown(owned, 1000, 1000)
    owned.chmod(0o640)
    os.chown(mnt / "home/user", 1000, 1000)
    os.mkfifo(mnt / "run/fifo", 0o600)
    os.mknod(mnt / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (mnt / "tmp").mkdir(mode=0o1777)
    (mnt / "tmp").chmod(0o1777)
    config("--cmd", '["/bin/sh"]', "--env", "PATH=/bin:/usr/bin")


def _top(mnt: Path, config) -> None:
    (mnt / "etc/file").unlink()
    shutil.rmtree(mnt / "etc/dir")
    shutil.rmtree(mnt / "opq")
    (mnt / "opq").mkdir()
    (mnt / "opq/b").write_text("b\n")
    (mnt / "etc/new").write_text("new\n")
    config("--cmd", '["/bin/sh", "-c", "echo hello from top"]', "--env", "GREETING=hi",
           "--workingdir", "/opq", "--label", "org.example.role=test",
           "--port", "8080/tcp")  # fmt: skip


def _other(mnt: Path, config) -> None:
    (mnt / "srv").mkdir()
    (mnt / "srv/other.txt").write_text("other\n")


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """name -> {source kind -> path}, plus ``top`` as ``oci-zstd``; built once per session."""
    if os.geteuid() != 0:
        pytest.skip("building images with buildah's overlay driver needs root")
    for tool in ("buildah", "skopeo", "umoci"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    root = tmp_path_factory.mktemp("buildah")
    out = tmp_path_factory.mktemp("exports")
    builder = Builder(root)
    try:
        base_ctr = builder.b("from", "scratch")
        mnt = Path(builder.b("mount", base_ctr))
        try:
            _base(mnt, lambda *a: builder.b("config", *a, base_ctr))
        finally:
            builder.b("umount", base_ctr)
        builder.b("commit", "-q", base_ctr, "localhost/base:1")
        builder.b("rm", base_ctr)
        builder.build("top", "localhost/base:1", _top)
        builder.build("other", "localhost/base:1", _other)
        result = {name: builder.export(name, out) for name in NAMES}
        zstd = out / "top-oci-zstd"
        _run("skopeo", "copy", "-q", "--dest-compress-format", "zstd",
             f"oci:{result['top']['oci']}:top", f"oci:{zstd}:top")  # fmt: skip
        result["top"]["oci-zstd"] = zstd
    finally:
        builder.cleanup()
    return result


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry below ``root``: type, mode, owner, and content hash / link target / rdev."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            entry: tuple = (stat.S_IFMT(st.st_mode), oct(stat.S_IMODE(st.st_mode)),
                            st.st_uid, st.st_gid)  # fmt: skip
            if stat.S_ISREG(st.st_mode):
                entry += (hashlib.sha256(path.read_bytes()).hexdigest(),)
            elif stat.S_ISLNK(st.st_mode):
                entry += (str(path.readlink()),)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                entry += (st.st_rdev,)
            out[str(path.relative_to(root))] = entry
    return out


def store_files(store: Path) -> set[str]:
    """Files and directories of a store that matter (locks and tmp/ excluded)."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(store):
        rel = Path(dirpath).relative_to(store)
        if rel.parts[:1] in (("locks",), ("tmp",)):
            continue
        if rel.parts[:1] == ("layers",) and len(rel.parts) > 2:
            continue
        found.update(str(rel / n) for n in dirnames + filenames)
    return found


@pytest.fixture
def umoci_unpack(tmp_path):
    """``umoci unpack`` an image of a layout; returns the rootfs path."""
    counter = iter(range(1000))

    def unpack(layout: Path, tag: str) -> Path:
        bundle = tmp_path / f"umoci-{next(counter)}"
        _run("umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle))
        return bundle / "rootfs"

    return unpack


@pytest.fixture
def overlay_mounts():
    """Mount points to unmount at teardown, even when the test fails."""
    targets: list[Path] = []
    yield targets
    for target in reversed(targets):
        subprocess.run(["umount", str(target)], check=False)
