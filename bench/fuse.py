"""bench/fuse: the fuse backend beside the kernel overlay and fuse-overlayfs.

One layered tree (3 lowers, about 20k files and 80 MB) is mounted in turn by the kernel
overlay, by fuse-overlayfs (Debian package) and by our pyfuse3 daemon, each with a fresh
upperdir and workdir, and timed on:

  find (warm)      ``find MNT`` after one untimed walk, best of 3
  read (first)     ``tar -cf - MNT | cat >/dev/null``, first time through the mount
  read (repeat)    the same again, best of 2
  copy-up 1000     append one byte to 1,000 lower files (data copy-up)

(``tar -cf /dev/null`` would read nothing: GNU tar skips file data when the archive is
/dev/null, so the archive goes through a pipe.) Prints the seconds and the ratios ours /
kernel, ours / fuse-overlayfs and fuse-overlayfs / kernel. The machine may be shared and
busy: run it twice and compare. Needs root. Usage: bench/fuse [--keep]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLLECTIONS = REPO / "build" / "collections"
sys.path.insert(0, str(COLLECTIONS))

from ansible_collections.lapis.layers.plugins.module_utils.fuse_overlay import (  # noqa: E402
    install,
)

LAYERS = 3
DIRS_PER_LAYER = 70
FILES_PER_DIR = 95  # 3 * 70 * 95 = 19,950 files
COPY_UP = 1000
PKG = "ansible_collections.lapis.layers.plugins.module_utils.fuse_overlay"
LAUNCH = (
    f"import sys; sys.path.insert(0, {str(COLLECTIONS)!r}); "
    f"from {PKG}.daemon import main; sys.exit(main())"
)


def build_tree(root: Path) -> list[Path]:
    """Lowers topmost first; sizes 1-8 KiB; some names repeat across layers."""
    lowers = [root / f"lower{i}" for i in range(LAYERS)]
    for index, lower in enumerate(lowers):
        for d in range(DIRS_PER_LAYER):
            directory = lower / f"d{d:03d}"
            directory.mkdir(parents=True)
            for f in range(FILES_PER_DIR):
                name = f"f{f:03d}" if f % 5 else f"l{index}-{f:03d}"
                size = 1024 * (1 + (d * 7 + f * 3 + index) % 8)
                (directory / name).write_bytes(bytes([65 + (f % 26)]) * size)
    return lowers


def run(argv: list[str], **kwargs: object) -> None:
    subprocess.run(argv, check=True, **kwargs)  # type: ignore[call-overload]


class Impl:
    """One way to mount the union."""

    def __init__(self, name: str, mount: Callable[[Path, str], None]) -> None:
        self.name = name
        self.mount = mount


def options(lowers: list[Path], upper: Path, work: Path) -> str:
    return f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"


def mount_kernel(mnt: Path, opts: str) -> None:
    run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)])


def mount_fuse_overlayfs(mnt: Path, opts: str) -> None:
    run(["fuse-overlayfs", "-o", opts, str(mnt)])


def mount_ours(mnt: Path, opts: str) -> None:
    log = mnt.parent / "lapis-overlay.log"
    env = dict(os.environ, LAPIS_OVERLAY_RUN_DIR=str(mnt.parent / "run"))
    cmd = [sys.executable, "-c", LAUNCH, "none", str(mnt), "-o", f"{opts},logfile={log}"]
    run(cmd, env=env)


def unmount(mnt: Path) -> None:
    """umount, and wait for a FUSE daemon (ours or fuse-overlayfs) to let go."""
    state = install.daemon_state(str(mnt), str(mnt.parent / "run"))
    subprocess.run(["umount", str(mnt)], check=False)
    if state is not None:
        install.wait_for_exit(state["pid"], timeout=10)
    time.sleep(0.3)


def timed(func: Callable[[], None]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def walk(mnt: Path) -> None:
    run(["find", str(mnt)], stdout=subprocess.DEVNULL)


def read_all(mnt: Path) -> None:
    run(["bash", "-c", 'tar -cf - -C "$1" . | cat >/dev/null', "tar", str(mnt)])


def copy_up(mnt: Path) -> None:
    done = 0
    for d in range(DIRS_PER_LAYER):
        for f in range(1, FILES_PER_DIR):
            if f % 5 == 0:
                continue
            with open(mnt / f"d{d:03d}" / f"f{f:03d}", "ab") as handle:
                handle.write(b"x")
            done += 1
            if done == COPY_UP:
                return


def measure(impl: Impl, lowers: list[Path], work_root: Path) -> dict[str, float]:
    base = work_root / impl.name
    mnt, upper, work = base / "mnt", base / "upper", base / "work"
    for path in (mnt, upper, work):
        path.mkdir(parents=True)
    impl.mount(mnt, options(lowers, upper, work))
    try:
        walk(mnt)
        find = min(timed(lambda: walk(mnt)) for _run in range(3))
        first = timed(lambda: read_all(mnt))
        repeat = min(timed(lambda: read_all(mnt)) for _run in range(2))
        copy = timed(lambda: copy_up(mnt))
        written = sum(1 for p in upper.rglob("*") if p.is_file())
        if written != COPY_UP:
            raise SystemExit(f"{impl.name}: {written} files in the upperdir, not {COPY_UP}")
    finally:
        unmount(mnt)
    return {"find (warm)": find, "read (first)": first, "read (repeat)": repeat, "copy-up": copy}


def main() -> None:
    keep = "--keep" in sys.argv[1:]
    if os.geteuid() != 0:
        raise SystemExit("bench/fuse needs root (kernel overlay mounts)")
    root = Path(tempfile.mkdtemp(prefix="lapis-bench-fuse-"))
    try:
        t0 = time.perf_counter()
        lowers = build_tree(root)
        count = sum(1 for lower in lowers for p in lower.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for lower in lowers for p in lower.rglob("*") if p.is_file())
        print(
            f"tree: {LAYERS} lowers, {count} files, {size / 1e6:.0f} MB, built in "
            f"{time.perf_counter() - t0:.1f} s; load average {os.getloadavg()[0]:.1f}"
        )
        impls = [
            Impl("kernel", mount_kernel),
            Impl("fuse-overlayfs", mount_fuse_overlayfs),
            Impl("lapis", mount_ours),
        ]
        results = {impl.name: measure(impl, lowers, root / "mounts") for impl in impls}
        report(results)
    finally:
        for mnt in sorted(root.glob("mounts/*/mnt"), reverse=True):
            subprocess.run(["umount", "-l", str(mnt)], check=False, stderr=subprocess.DEVNULL)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def report(results: dict[str, dict[str, float]]) -> None:
    kernel, peer, ours = results["kernel"], results["fuse-overlayfs"], results["lapis"]
    head = f"{'operation':15} {'kernel':>9} {'fuse-ovl':>9} {'lapis':>9}"
    print(f"{head} {'lapis/kern':>11} {'lapis/fovl':>11} {'fovl/kern':>10}")
    for key in kernel:
        k, p, o = kernel[key], peer[key], ours[key]
        print(f"{key:15} {k:9.3f} {p:9.3f} {o:9.3f} {o / k:10.2f}x {o / p:10.2f}x {p / k:9.2f}x")
    print(f"seconds; load average now {os.getloadavg()[0]:.1f} (shared machine: figures are noisy)")


if __name__ == "__main__":
    main()
