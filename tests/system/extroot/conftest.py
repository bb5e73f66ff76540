"""Simulated OpenWrt routers with no Python, reached by Ansible over SSH.

Each router is a busybox-only root filesystem (Debian's static busybox), with the
router's real dynamically linked tools copied in with their libraries (dropbear,
mke2fs, mkfs.f2fs, blkid), booted by ``sim/boot.sh`` in its own PID and mount
namespace: rootfs_data is an ext4 loop device mounted on ``/overlay``, ``/`` is an
overlayfs over the read-only rom, and dropbear listens on one of this area's
loopback addresses. A second loop device stands in for the USB stick (``/dev/sda``
inside the router). Substitutes for router tools that cannot exist here live in
``sim/`` and are listed in ``README.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.lapis.layers.tests.system.conftest import ansible_env

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SIM = HERE / "sim"
ADDRESSES = ("127.0.0.21", "127.0.0.22", "127.0.0.23")
PORT = 2222
# Ansible's ssh connections share one master per router (%h: the router's address);
# stop() ends it, and it ends by itself when the router's dropbear goes away.
CONTROL_PATH = "/tmp/lapis-extroot-ssh-%h-%p"
ROUTER_TOOLS = {
    "/usr/sbin/dropbear": "/usr/sbin/dropbear",
    "/sbin/mke2fs": "/usr/sbin/mke2fs",
    "/sbin/mkfs.f2fs": "/usr/sbin/mkfs.f2fs",
    "/sbin/blkid": "/usr/sbin/blkid",
}
OPENWRT_RELEASE = """DISTRIB_ID='OpenWrt'
DISTRIB_RELEASE='23.05.3'
DISTRIB_REVISION='r23809-234f1a2efa'
DISTRIB_TARGET='x86/64'
DISTRIB_ARCH='x86_64'
DISTRIB_DESCRIPTION='OpenWrt 23.05.3 r23809-234f1a2efa'
DISTRIB_TAINTS=''
"""
ROM_FSTAB = """config global
\toption anon_swap '0'
\toption anon_mount '0'
\toption auto_swap '1'
\toption auto_mount '1'
\toption delay_root '5'
\toption check_fs '0'
"""
# The router's own fstab, changed by its owner: kept in rootfs_data's upperdir.
USER_FSTAB = """# /etc/config/fstab: edited on the router
config global
\toption anon_swap '0'
\toption anon_mount '0'
\toption auto_swap '1'
\toption auto_mount '1'
\toption delay_root '5'
\toption check_fs '0'

# the data partition of the NAS disk
config mount 'nas'
\toption target '/mnt/nas'
\toption uuid "0a6a0a4c-2f1e-4f6c-9b0e-3c7e4e2b9d11"
\toption enabled 0
\tlist options 'noatime'
\tlist options 'nodiratime'

config swap
\toption device '/dev/sdb1'
\toption enabled '0'
"""
SYSTEM_CONFIG = """config system
\toption hostname '{name}'
\toption timezone 'UTC'
\toption ttylogin '0'
\toption log_size '64'
\toption urandom_seed '0'

config timeserver 'ntp'
\toption enabled '1'
\tlist server '0.openwrt.pool.ntp.org'
"""


def sh(*cmd: str | Path, **kw: Any) -> str:
    """Run a host command, fail loudly with its output."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return proc.stdout


def libraries(binary: str) -> list[str]:
    """The shared libraries ``ldd`` says a dynamically linked tool needs."""
    libs = []
    for line in sh("ldd", binary).splitlines():
        parts = line.split()
        for part in parts:
            if part.startswith("/"):
                libs.append(part)
                break
    return libs


def copy_in(rom: Path, src: str, dest: str) -> None:
    target = rom / dest.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(src), target)


def build_rom(rom: Path, name: str, usb: str, flash: str, client_pub: str) -> None:
    """The read-only part of the router: busybox, the router's tools, /etc, /dev."""
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/config", "etc/dropbear", "dev/pts"):
        (rom / d).mkdir(parents=True, exist_ok=True)
    for d in ("proc", "sys", "tmp", "overlay", "rom", "rwm", "mnt", "var", "root/.ssh"):
        (rom / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", rom / "bin/busybox")
    sh("chroot", rom, "/bin/busybox", "--install", "-s")
    for src, dest in ROUTER_TOOLS.items():
        copy_in(rom, src, dest)
        for lib in libraries(src):
            copy_in(rom, lib, lib)
    copy_in(
        rom,
        "/usr/lib/x86_64-linux-gnu/libnss_files.so.2",
        "/lib/x86_64-linux-gnu/libnss_files.so.2",
    )
    (rom / "usr/sbin/mkfs.ext4").symlink_to("mke2fs")
    shutil.copy2(SIM / "block", rom / "sbin/block")
    shutil.copy2(SIM / "opkg", rom / "bin/opkg")
    feed = rom / "usr/share/sim-feed/block-mount/sbin"
    feed.mkdir(parents=True)
    shutil.copy2(SIM / "block", feed / "block")
    etc = rom / "etc"
    (etc / "openwrt_release").write_text(OPENWRT_RELEASE)
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/ash\nnobody:*:65534:65534:nobody:/var:/bin/false\n"
    )
    (etc / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (etc / "shadow").write_text("root:*:0:0:99999:7:::\n")
    (etc / "shells").write_text("/bin/sh\n/bin/ash\n")
    (etc / "profile").write_text("export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n")
    (etc / "motd").write_text("OpenWrt (simulated)\n")
    (etc / "config/fstab").write_text(ROM_FSTAB)
    (etc / "config/system").write_text(SYSTEM_CONFIG.format(name=name))
    sh("dropbearkey", "-t", "ed25519", "-f", etc / "dropbear/dropbear_ed25519_host_key")
    (rom / "root").chmod(0o700)
    (rom / "root/.ssh").chmod(0o700)
    (rom / "root/.ssh/authorized_keys").write_text(client_pub)
    (rom / "root/.ssh/authorized_keys").chmod(0o600)
    for node, mode, dev in (
        ("null", stat.S_IFCHR | 0o666, os.makedev(1, 3)),
        ("zero", stat.S_IFCHR | 0o666, os.makedev(1, 5)),
        ("random", stat.S_IFCHR | 0o666, os.makedev(1, 8)),
        ("urandom", stat.S_IFCHR | 0o666, os.makedev(1, 9)),
        ("tty", stat.S_IFCHR | 0o666, os.makedev(5, 0)),
        ("sda", stat.S_IFBLK | 0o660, Path(usb).stat().st_rdev),
        (Path(flash).name, stat.S_IFBLK | 0o660, Path(flash).stat().st_rdev),
    ):
        os.mknod(rom / "dev" / node, mode, dev)
    (rom / "dev/ptmx").symlink_to("pts/ptmx")


def write_sample_overlay(flash_dir: Path, name: str) -> None:
    """rootfs_data as a router in use has it: upperdir full of owners, modes and links."""
    upper = flash_dir / "upper"
    (flash_dir / "work").mkdir(parents=True)
    (upper / "etc/config").mkdir(parents=True)
    (upper / "etc/config/fstab").write_text(USER_FSTAB)
    (upper / "etc/config/network").write_text("config interface 'lan'\n\toption proto 'static'\n")
    (upper / "etc/config/network").chmod(0o600)
    os.mknod(upper / "etc/motd", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # whiteout
    data = upper / "srv/data"
    data.mkdir(parents=True)
    (data / "plain.txt").write_text(f"router {name}\n" * 50)
    (data / "random.bin").write_bytes(os.urandom(200_000))
    (data / "empty").touch()
    (data / "with space.txt").write_text("spaces\n")
    os.link(data / "plain.txt", data / "hardlink.txt")
    (data / "relative-link").symlink_to("plain.txt")
    (data / "absolute-link").symlink_to("/etc/config/system")
    (data / "dangling-link").symlink_to("/nonexistent/target")
    os.mkfifo(data / "fifo")
    (data / "setuid-tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (data / "setuid-tool").chmod(0o4755)
    (data / "secret").write_text("key\n")
    (data / "secret").chmod(0o400)
    os.chown(data / "secret", 1000, 1000)
    os.lchown(data / "relative-link", 65534, 65534)
    (data / "shared").mkdir()
    (data / "shared").chmod(0o1777)
    os.chown(data / "shared", 65534, 65534)
    (data / "shared/deep/er").mkdir(parents=True)
    (data / "shared/deep/er/file").write_text("deep\n")
    (upper / "usr/lib/opkg").mkdir(parents=True)
    (upper / "usr/lib/opkg/status").write_text(
        "Package: block-mount\nStatus: install ok installed\n"
    )


@dataclass
class Router:
    """One running simulated router and the host-side handles to stop it."""

    name: str
    address: str
    root: Path
    usb_image: Path
    usb_loop: str
    flash_loop: str
    sample: Path
    proc: subprocess.Popen[bytes] | None = None
    loops: list[str] = field(default_factory=list)

    def shell(self, ssh_cmd: list[str], script: str) -> str:
        """Run a script on the router over SSH (the tests' own eyes, not Ansible's)."""
        return sh(*ssh_cmd, "-p", str(PORT), f"root@{self.address}", script)


def losetup(image: Path) -> str:
    return sh("losetup", "-f", "--show", image).strip()


def wait_listening(router: Router, log: Path) -> None:
    """Wait for dropbear to accept connections (start-up, not a timed assertion)."""
    for _attempt in range(200):
        assert router.proc is not None
        if router.proc.poll() is not None:
            raise AssertionError(f"router {router.name} did not boot:\n{log.read_text()}")
        try:
            with socket.create_connection((router.address, PORT), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"router {router.name} never listened:\n{log.read_text()}")


def stop(router: Router) -> None:
    """Kill the router's namespace by unshare's PID, then detach its loop devices."""
    if router.proc is not None and router.proc.poll() is None:
        # unshare ignores SIGTERM while it waits; SIGKILL makes the kernel send its
        # child (the namespace's PID 1) the --kill-child signal, ending the namespace.
        router.proc.kill()
        router.proc.wait()
    for loop in router.loops:
        subprocess.run(["losetup", "-d", loop], check=False, capture_output=True)
    control = CONTROL_PATH.replace("%h", router.address).replace("%p", str(PORT))
    if Path(control).exists():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={control}", "-O", "exit", router.address],
            check=False, capture_output=True, timeout=30,
        )  # fmt: skip


@dataclass
class Keys:
    private: Path
    public: str


@pytest.fixture
def client_key(tmp_path: Path) -> Keys:
    key = tmp_path / "id_ed25519"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
    return Keys(key, (tmp_path / "id_ed25519.pub").read_text())


@pytest.fixture
def ssh_cmd(client_key: Keys) -> list[str]:
    return [
        "ssh", "-i", str(client_key.private), "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
    ]  # fmt: skip


RouterFactory = Callable[[str, str], Router]


@pytest.fixture
def make_router(tmp_path: Path, client_key: Keys) -> Iterator[RouterFactory]:
    """Boot simulated routers; all are stopped and their loops detached afterwards."""
    routers: list[Router] = []

    def make(name: str, address: str) -> Router:
        base = tmp_path / name
        base.mkdir()
        sample = base / "sample-flash"
        write_sample_overlay(sample, name)
        flash_image = base / "rootfs_data.img"
        sh("mkfs.ext4", "-q", "-F", "-L", "rootfs_data", "-d", sample, flash_image, "24M")
        usb_image = base / "usb-stick.img"
        with open(usb_image, "wb") as f:
            f.truncate(48 * 1024 * 1024)
        router = Router(name, address, base / "state/root", usb_image, "", "", sample)
        routers.append(router)
        router.flash_loop = losetup(flash_image)
        router.loops.append(router.flash_loop)
        router.usb_loop = losetup(usb_image)
        router.loops.append(router.usb_loop)
        rom = base / "rom"
        build_rom(rom, name, router.usb_loop, router.flash_loop, client_key.public)
        log = base / "boot.log"
        with open(log, "wb") as out:
            router.proc = subprocess.Popen(
                ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation",
                 "private", "sh", str(SIM / "boot.sh"), str(rom), router.flash_loop,
                 str(base / "state"), address, str(PORT), router.usb_loop],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        wait_listening(router, log)
        return router

    try:
        yield make
    finally:
        for router in routers:
            stop(router)


def write_inventory(tmp_path: Path, routers: list[Router], keys: Keys) -> Path:
    """An inventory with the routers in group ``routers``, reached as root over SSH."""
    lines = ["[routers]"]
    for r in routers:
        lines.append(f"{r.name} ansible_host={r.address} ansible_port={PORT}")
    lines += [
        "[routers:vars]",
        "ansible_connection=ssh",
        "ansible_user=root",
        f"ansible_ssh_private_key_file={keys.private}",
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'",
        "ansible_ssh_args='-o ControlMaster=auto -o ControlPersist=20s"
        f" -o ControlPath={CONTROL_PATH} -o LogLevel=ERROR'",
    ]
    path = tmp_path / "inventory.ini"
    path.write_text("\n".join(lines) + "\n")
    return path


def router_env() -> dict[str, str]:
    """``ansible_env()`` without any Python interpreter setting: the routers have none."""
    env = ansible_env()
    env.pop("ANSIBLE_PYTHON_INTERPRETER", None)
    env["ANSIBLE_HOST_KEY_CHECKING"] = "false"
    env["ANSIBLE_RETRY_FILES_ENABLED"] = "false"
    return env


AdHoc = Callable[..., dict[str, dict[str, Any]]]


@pytest.fixture
def extroot_adhoc(tmp_path: Path, client_key: Keys) -> AdHoc:
    """Run ``lapis.layers.extroot`` ad hoc on routers; results per host via ``-t DIR``."""
    counter = iter(range(1_000_000))

    def run(
        routers: list[Router], check: bool = False, diff: bool = False, **args: Any
    ) -> dict[str, dict[str, Any]]:
        inventory = write_inventory(tmp_path, routers, client_key)
        tree = tmp_path / f"tree-{next(counter)}"
        cmd = ["ansible", "routers", "-i", str(inventory), "-t", str(tree), "-f", "3"]
        cmd += ["-m", "lapis.layers.extroot", "-a", json.dumps(args)]
        cmd += ["--check"] if check else []
        # the tree callback drops "diff" from results below verbosity 3
        cmd += ["--diff", "-vvv"] if diff else []
        proc = subprocess.run(cmd, env=router_env(), capture_output=True, text=True, check=False)
        results = {}
        for r in routers:
            result_file = tree / r.name
            if not result_file.exists():
                raise AssertionError(f"no result for {r.name}: {proc.stdout}\n{proc.stderr}")
            results[r.name] = json.loads(result_file.read_text())
            # ansible-core 2.19's tree output leaves "failed" out; the host line has it
            results[r.name]["failed"] = f"{r.name} | FAILED!" in proc.stdout
        return results

    return run
