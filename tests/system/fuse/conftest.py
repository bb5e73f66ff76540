"""Fixtures for the fuse backend's system tests: layers, kernel and fuse mounts, cleanup.

Every mount is recorded before it is made and unmounted (lazily if need be) in the
finalizer; every daemon is found by its pid file and killed by PID if it outlives its
mount, also when a test fails.
"""

import contextlib
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
COLLECTIONS = REPO / "build" / "collections"
PKG = "ansible_collections.lapis.layers.plugins.module_utils.fuse_overlay"
LAUNCH = (
    f"import sys; sys.path.insert(0, {str(COLLECTIONS)!r}); "
    f"from {PKG}.daemon import main; sys.exit(main())"
)
OPAQUE = "trusted.overlay.opaque"


def write(path: Path, text: str, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chown(path, *owner)
    path.chmod(mode)


def whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR, 0)


def build_layers(root: Path, count: int) -> list[Path]:
    """``count`` lowerdirs, topmost first, with the cases the sequences rely on."""
    lowers = [root / f"l{i}" for i in range(count)]
    for lower in lowers:
        lower.mkdir(parents=True)
    bottom = lowers[-1]
    write(bottom / "dir/x", "x from bottom")
    write(bottom / "dir/y", "y from bottom")
    write(bottom / "dir/sub/z", "z")
    write(bottom / "deep/a/b/leaf", "leaf")
    write(bottom / "mode600", "secret", 0o600, (1000, 1000))
    write(bottom / "exec", "#!/bin/sh\necho hi\n", 0o4755)
    write(bottom / "hl1", "hardlinked")
    os.link(bottom / "hl1", bottom / "hl2")
    os.mkfifo(bottom / "fifo")
    (bottom / "userdir").mkdir()
    os.chown(bottom / "userdir", 1000, 1000)
    (bottom / "sticky").mkdir(mode=0o777)
    (bottom / "sticky").chmod(0o1777)
    write(bottom / "sticky/owned1000", "mine", 0o644, (1000, 1000))
    (bottom / "setgid_dir").mkdir()
    os.chown(bottom / "setgid_dir", 0, 100)
    (bottom / "setgid_dir").chmod(0o2777)
    with open(bottom / "sparse", "wb") as handle:
        handle.seek(1 << 20)
        handle.write(b"data after a hole")
    for index, lower in enumerate(lowers):
        write(lower / f"f{index}", f"file of layer {index}")
        write(lower / f"shared/s{index}", f"shared {index}")
        write(lower / "common", f"common from layer {index}")
        os.setxattr(lower / "common", "user.color", f"colour {index}".encode())
        write(lower / f"merged/m{index}", f"m{index}")
    (lowers[0] / "link").symlink_to("f0")
    if count >= 2:
        top, below = lowers[0], lowers[1]
        write(below / "wh_target", "hidden by a whiteout above")
        whiteout(top / "wh_target")
        write(below / "opq/hidden", "hidden by an opaque dir")
        write(top / "opq/shown", "shown")
        os.setxattr(top / "opq", OPAQUE, b"y")
        write(below / "typeswap/inner", "dir below a file")
        write(top / "typeswap", "file above a dir")
        write(below / "swap2", "file below a dir")
        write(top / "swap2/below", "dir above a file")
    if count >= 3:
        write(lowers[2] / "merged/m2", "hidden")
        whiteout(lowers[1] / "merged/m2")
        write(lowers[0] / "merged/m2", "m2 from top")
    return lowers


def snapshot(root: Path) -> dict[str, Any]:
    """What a user sees: type, mode, owner, size, content, link target, user xattrs."""
    tree: dict[str, Any] = {}

    def walk(directory: Path, rel: str) -> None:
        for path in sorted(directory.iterdir()):
            name = path.name
            key = f"{rel}{name}"
            st = os.lstat(path)
            item: dict[str, Any] = {
                "type": stat.S_IFMT(st.st_mode),
                "mode": oct(stat.S_IMODE(st.st_mode)),
                "owner": [st.st_uid, st.st_gid],
            }
            if stat.S_ISREG(st.st_mode):
                item["size"] = st.st_size
                item["sha"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            elif stat.S_ISLNK(st.st_mode):
                item["target"] = str(path.readlink())
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                item["rdev"] = st.st_rdev
            if not stat.S_ISLNK(st.st_mode):
                names = sorted(n for n in os.listxattr(path) if n.startswith("user."))
                item["xattrs"] = {n: os.getxattr(path, n).decode() for n in names}
            tree[key] = item
            if stat.S_ISDIR(st.st_mode):
                walk(path, key + "/")

    walk(root, "")
    return tree


class Mounts:
    """Kernel overlay and fuse mounts made by one test, undone in reverse order."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.run_dir = tmp / "run"
        self.mounted: list[Path] = []
        self.pids: dict[Path, int] = {}
        self.connections: dict[Path, int] = {}

    layers = staticmethod(build_layers)
    snapshot = staticmethod(snapshot)

    def kernel(self, mnt: Path, lowers: list[Path], upper: Path, work: Path) -> Path:
        for path in (mnt, upper, work):
            path.mkdir(parents=True, exist_ok=True)
        opts = f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"
        self.mounted.append(mnt)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)], check=True)
        return mnt

    def fuse(self, mnt: Path, lowers: list[Path], upper: Path, work: Path) -> Path:
        for path in (mnt, upper, work):
            path.mkdir(parents=True, exist_ok=True)
        opts = (
            f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work},"
            f"logfile={self.tmp / 'fuse.log'}"
        )
        env = dict(os.environ, LAPIS_OVERLAY_RUN_DIR=str(self.run_dir))
        self.mounted.append(mnt)
        cmd = [sys.executable, "-c", LAUNCH, "none", str(mnt), "-o", opts]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        self.pids[mnt] = self.daemon_pid(mnt)
        self.connections[mnt] = os.minor(mnt.stat().st_dev)
        return mnt

    def daemon_pid(self, mnt: Path) -> int:
        for state in self.run_dir.glob("*.json"):
            data = json.loads(state.read_text())
            if data["mountpoint"] == str(mnt):
                return int(data["pid"])
        raise AssertionError(f"no state file for {mnt} in {self.run_dir}")

    def umount(self, mnt: Path) -> None:
        subprocess.run(["umount", str(mnt)], check=True)
        self.mounted.remove(mnt)
        pid = self.pids.get(mnt)
        if pid is not None:
            if not _wait_gone(pid, 5):
                # Another helper's new mount namespace may hold a copy of the mount, which
                # keeps the FUSE session alive after our umount; end that session.
                abort_connection(self.connections[mnt])
            assert _wait_gone(pid, 10), f"fuse daemon {pid} still running after umount {mnt}"
            del self.pids[mnt]

    def cleanup(self) -> None:
        for mnt in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)
            if mnt in self.connections and mnt in self.pids:
                abort_connection(self.connections[mnt])
        for pid in self.pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


FUSECTL = Path("/sys/fs/fuse/connections")


def abort_connection(number: int) -> None:
    """Abort one FUSE connection through fusectl (mounted here when it is not yet)."""
    if not (FUSECTL / str(number)).exists() and not os.path.ismount(FUSECTL):
        subprocess.run(["mount", "-t", "fusectl", "none", str(FUSECTL)], check=False)
    with contextlib.suppress(OSError):  # already gone
        (FUSECTL / str(number) / "abort").write_text("1")


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):  # exited; init reaps it when it gets round to it
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    tracker = Mounts(tmp_path)
    try:
        yield tracker
    finally:
        tracker.cleanup()
