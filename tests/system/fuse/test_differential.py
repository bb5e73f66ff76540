"""Differential tests: the same operations on a kernel overlay and on the fuse backend.

Each sequence of ``sequences.yml`` runs over identical layers on both; the results of
every operation (value or errno) and the visible trees must be equal. Then the upper
written through fuse is mounted with the kernel, and the upper written by the kernel
is mounted with fuse, and both must show the kernel's tree again.
"""

import errno
import hashlib
import json
import os
import shlex
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

SEQUENCES = yaml.safe_load((Path(__file__).parent / "sequences.yml").read_text())
CASES = [
    pytest.param(seq["ops"], count, id=f"{seq['name']}-{count}")
    for seq in SEQUENCES
    for count in seq["lowers"]
]


class Runner:
    """Interprets the op language against one mount point."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.held: dict[str, int] = {}

    def p(self, rel: str) -> Path:
        return self.root if rel == "." else self.root / rel

    def run(self, line: str) -> list[Any]:
        words = shlex.split(line)
        if words[0] == "as":
            return self.run_as(words[1], words[2:])
        try:
            return ["ok", self.do(words)]
        except OSError as exc:
            return ["err", errno.errorcode.get(exc.errno or 0, str(exc.errno))]

    def run_as(self, ids: str, words: list[str]) -> list[Any]:
        uid, gid = (int(x) for x in ids.split(":"))
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: drop to the user, run one op, report as JSON
            os.close(read_fd)
            try:
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
                result = self.run(shlex.join(words))
            except BaseException as exc:
                result = ["crash", repr(exc)]
            os.write(write_fd, json.dumps(result).encode())
            os._exit(0)
        os.close(write_fd)
        data = b""
        while chunk := os.read(read_fd, 65536):
            data += chunk
        os.close(read_fd)
        os.waitpid(pid, 0)
        return json.loads(data)

    def do(self, w: list[str]) -> Any:
        op, args = w[0], w[1:]
        handler = getattr(self, "op_" + op, None)
        if handler is None:
            raise AssertionError(f"unknown op {op!r}")
        return handler(*args)

    def op_write(self, path: str, text: str) -> None:
        fd = os.open(self.p(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, text.encode())
        os.close(fd)

    def op_append(self, path: str, text: str) -> None:
        fd = os.open(self.p(path), os.O_WRONLY | os.O_APPEND)
        os.write(fd, text.encode())
        os.close(fd)

    def op_pwrite(self, path: str, offset: str, text: str) -> None:
        fd = os.open(self.p(path), os.O_WRONLY)
        os.pwrite(fd, text.encode(), int(offset))
        os.close(fd)

    def op_read(self, path: str) -> str:
        data = self.p(path).read_bytes()
        if len(data) > 256:
            return f"{len(data)} bytes sha256 {hashlib.sha256(data).hexdigest()[:16]}"
        return data.decode("utf-8", "replace")

    def op_big(self, path: str, mib: str) -> None:
        block = bytes(range(256)) * 4096
        with open(self.p(path), "wb") as handle:
            for _block in range(int(mib)):
                handle.write(block)

    def op_sparse(self, path: str, offset: str, text: str) -> None:
        fd = os.open(self.p(path), os.O_WRONLY | os.O_CREAT, 0o644)
        os.pwrite(fd, text.encode(), int(offset))
        os.close(fd)

    def op_mkdir(self, path: str, mode: str = "0755") -> None:
        self.p(path).mkdir(int(mode, 8))

    def op_mknod(self, path: str, kind: str, major: str, minor: str) -> None:
        ftype = stat.S_IFIFO if kind == "fifo" else stat.S_IFCHR
        os.mknod(self.p(path), ftype | 0o644, os.makedev(int(major), int(minor)))

    def op_symlink(self, target: str, path: str) -> None:
        self.p(path).symlink_to(target)

    def op_link(self, src: str, dst: str) -> None:
        os.link(self.p(src), self.p(dst), follow_symlinks=False)

    def op_unlink(self, path: str) -> None:
        self.p(path).unlink()

    def op_rmdir(self, path: str) -> None:
        os.rmdir(self.p(path))  # noqa: PTH106 -- "." must reach rmdir(2) as given

    def op_rename(self, src: str, dst: str, mode: str = "") -> None:
        if not mode:
            self.p(src).rename(self.p(dst))
            return
        flags = {"noreplace": 1, "exchange": 2}[mode]
        import ctypes  # noqa: PLC0415 -- only the flag variants need renameat2

        libc = ctypes.CDLL(None, use_errno=True)
        res = libc.renameat2(-100, bytes(self.p(src)), -100, bytes(self.p(dst)), flags)
        if res != 0:
            raise OSError(ctypes.get_errno(), "renameat2")

    def op_truncate(self, path: str, size: str) -> None:
        os.truncate(self.p(path), int(size))

    def op_chmod(self, path: str, mode: str) -> None:
        self.p(path).chmod(int(mode, 8))

    def op_chown(self, path: str, uid: str, gid: str) -> None:
        os.lchown(self.p(path), int(uid), int(gid))

    def op_utime(self, path: str, seconds: str) -> None:
        os.utime(self.p(path), (int(seconds), int(seconds)), follow_symlinks=False)

    def op_fsync(self, path: str) -> None:
        fd = os.open(self.p(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def op_statfs(self) -> list[int]:
        sv = os.statvfs(self.root)
        return [sv.f_bsize, sv.f_namemax]

    def op_setxattr(self, path: str, name: str, value: str) -> None:
        os.setxattr(self.p(path), name, value.encode(), follow_symlinks=False)

    def op_rmxattr(self, path: str, name: str) -> None:
        os.removexattr(self.p(path), name, follow_symlinks=False)

    def op_getxattr(self, path: str, name: str) -> str:
        return os.getxattr(self.p(path), name, follow_symlinks=False).decode()

    def op_listxattr(self, path: str) -> list[str]:
        return sorted(os.listxattr(self.p(path), follow_symlinks=False))

    def op_unlinked(self, path: str, text: str) -> list[Any]:
        fd = os.open(self.p(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self.p(path).unlink()
            os.write(fd, text.encode())
            st = os.fstat(fd)
            return [os.pread(fd, 100, 0).decode(), st.st_size, st.st_nlink]
        finally:
            os.close(fd)

    def op_hold(self, path: str) -> None:
        self.held[path] = os.open(self.p(path), os.O_RDONLY)

    def op_readheld(self, path: str) -> str:
        fd = self.held.pop(path)
        try:
            return os.pread(fd, 4096, 0).decode()
        finally:
            os.close(fd)

    def op_listdir(self, path: str) -> list[str]:
        return sorted(p.name for p in self.p(path).iterdir())

    def op_stat(self, path: str) -> list[Any]:
        st = os.lstat(self.p(path))
        size = None if stat.S_ISDIR(st.st_mode) else st.st_size
        nlink = None if stat.S_ISDIR(st.st_mode) else st.st_nlink
        return [oct(st.st_mode), st.st_uid, st.st_gid, size, nlink]

    def close(self) -> None:
        for fd in self.held.values():
            os.close(fd)
        self.held.clear()


def run_ops(root: Path, ops: list[str]) -> list[Any]:
    runner = Runner(root)
    try:
        return [[line, runner.run(line)] for line in ops]
    finally:
        runner.close()


@pytest.mark.parametrize(("ops", "count"), CASES)
def test_same_as_kernel(mounts: Any, tmp_path: Path, ops: list[str], count: int) -> None:
    k_lowers = mounts.layers(tmp_path / "k", count)
    f_lowers = mounts.layers(tmp_path / "f", count)
    assert mounts.snapshot(k_lowers[-1]) == mounts.snapshot(f_lowers[-1])

    # The same operations on the kernel overlay and on ours.
    mnt = mounts.kernel(tmp_path / "k/mnt", k_lowers, tmp_path / "k/upper", tmp_path / "k/work")
    k_results = run_ops(mnt, ops)
    k_tree = mounts.snapshot(mnt)
    mounts.umount(mnt)
    mnt = mounts.fuse(tmp_path / "f/mnt", f_lowers, tmp_path / "f/upper", tmp_path / "f/work")
    f_results = run_ops(mnt, ops)
    f_tree = mounts.snapshot(mnt)
    mounts.umount(mnt)
    assert f_results == k_results
    assert f_tree == k_tree

    # Each upper read back by the other implementation.
    mnt = mounts.kernel(tmp_path / "f/kmnt", f_lowers, tmp_path / "f/upper", tmp_path / "f/kwork")
    assert mounts.snapshot(mnt) == k_tree
    mounts.umount(mnt)
    mnt = mounts.fuse(tmp_path / "k/fmnt", k_lowers, tmp_path / "k/upper", tmp_path / "k/fwork")
    assert mounts.snapshot(mnt) == k_tree
    mounts.umount(mnt)
