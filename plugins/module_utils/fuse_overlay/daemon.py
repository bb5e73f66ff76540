# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The ``lapis-overlay`` program: a FUSE mount helper that serves one union and daemonises.

It is called the way mount(8) calls ``/sbin/mount.fuse.lapis-overlay`` and the way
``mount.fuse3`` calls a subtype's program: ``SOURCE MOUNTPOINT -o OPTIONS``. The
parent process returns only when the union is mounted (exit 0) or has failed (exit
1, the reason on stderr), so ``mount`` and fstab behave as with any filesystem. The
child detaches, logs to ``logfile=`` (default under /var/log/lapis-layers), writes a
pid file and a JSON state file named after the mount point, and exits when the
union is unmounted (``umount`` or ``fusermount3 -u``) or on SIGTERM/SIGINT, which
unmount first.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from . import install, serial
from . import options as opts
from .unionfs import HAS_PYFUSE3, UnionOperations, pyfuse3

try:
    import trio

    HAS_TRIO = True
except ImportError:
    trio = None  # type: ignore[assignment]
    HAS_TRIO = False

log = logging.getLogger("lapis.fuse_overlay")


class SetupError(Exception):
    """The union cannot be served; the message says what to fix."""


def check_layers(config: opts.OverlayConfig) -> None:
    """Refuse missing layers and an upperdir/workdir pair the union cannot use."""
    for path in [config.mountpoint, *config.lowerdirs]:
        if not Path(path).is_dir():
            raise SetupError(f"{path} is not a directory; create it or fix the mount options")
    if config.upperdir and config.workdir:
        for path in (config.upperdir, config.workdir):
            if not Path(path).is_dir():
                raise SetupError(f"{path} is not a directory; create it first")
        if Path(config.upperdir).stat().st_dev != Path(config.workdir).stat().st_dev:
            raise SetupError(
                f"upperdir {config.upperdir} and workdir {config.workdir} are on different "
                "filesystems; put both on the same filesystem"
            )


def fuse_mount_options(config: opts.OverlayConfig) -> List[str]:
    """Options for pyfuse3.init: the kernel does permission checks, everyone may enter."""
    options = ["fsname=" + opts.SUBTYPE, "subtype=" + opts.SUBTYPE, "default_permissions"]
    if os.geteuid() == 0:
        options.append("allow_other")
        # Like the kernel overlay, device nodes and set-id programs work unless refused.
        options += [o for o in ("dev", "suid") if "no" + o not in config.fuse_options]
    options += [o for o in config.fuse_options if o not in ("dev", "suid")]
    if config.upperdir is None and "ro" not in options:
        options.append("ro")
    return options


def write_state(config: opts.OverlayConfig, run_dir: str) -> None:
    """Pid file and JSON state beside it, replaced atomically."""
    Path(run_dir).mkdir(mode=0o755, parents=True, exist_ok=True)
    pid_path, state_path = opts.state_paths(config.mountpoint, run_dir)
    state = {
        "pid": os.getpid(),
        "mountpoint": config.mountpoint,
        "lowerdirs": config.lowerdirs,
        "upperdir": config.upperdir,
        "workdir": config.workdir,
        "userxattr": config.userxattr,
        "logfile": config.logfile,
        "options": opts.format_options(config),
        "started": time.time(),
    }
    for path, text in ((pid_path, f"{os.getpid()}\n"), (state_path, json.dumps(state))):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        Path(tmp).replace(path)


def remove_state(config: opts.OverlayConfig, run_dir: str) -> None:
    for path in opts.state_paths(config.mountpoint, run_dir):
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
            if str(os.getpid()) in text:
                Path(path).unlink()
        except OSError:
            pass


def _setup_logging(logfile: str) -> None:
    Path(logfile).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(logfile)
    handler.setFormatter(logging.Formatter("%(asctime)s lapis-overlay[%(process)d] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


async def _serve(mountpoint: str) -> None:
    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    # A lazy unmount ends the FUSE session; pyfuse3.main() then returns.
                    log.info("signal %d: unmounting %s", signum, mountpoint)
                    await trio.run_process(serial.lazy_unmount_argv(mountpoint), check=False)
                    return

        nursery.start_soon(on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def serve(config: opts.OverlayConfig, run_dir: str, ready_fd: Optional[int]) -> int:
    """Mount, report readiness on ``ready_fd``, serve until unmounted."""
    ops = UnionOperations(config)
    pyfuse3.init(ops, config.mountpoint, set(fuse_mount_options(config)))
    unmount = True
    try:
        write_state(config, run_dir)
        log.info("serving %s", opts.format_options(config))
        if ready_fd is not None:
            os.write(ready_fd, b"ok")
            os.close(ready_fd)
        if serial.supported(pyfuse3):
            serial.serve(pyfuse3, config.mountpoint)
        else:  # a pyfuse3 that does not take its event loop from pyfuse3.trio
            trio.run(_serve, config.mountpoint)
        unmount = False if not _still_mounted(config.mountpoint) else unmount
    except BaseException:
        log.exception("daemon failed")
        raise
    finally:
        pyfuse3.close(unmount=unmount)
        remove_state(config, run_dir)
        log.info("stopped")
    return 0


def _still_mounted(mountpoint: str) -> bool:
    target = os.path.realpath(mountpoint)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) > 4 and fields[4] == target:
                    return True
    except OSError:
        pass
    return False


def _detach(logfile: str) -> None:
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    out = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)
    os.chdir("/")


def _wait_ready(read_fd: int, pid: int) -> int:
    message = b""
    while True:
        chunk = os.read(read_fd, 4096)
        if not chunk:
            break
        message += chunk
    os.close(read_fd)
    if message == b"ok":
        return 0
    os.waitpid(pid, 0)
    text = message.decode("utf-8", "replace") or "the daemon exited before mounting"
    sys.stderr.write(f"lapis-overlay: {text}\n")
    return 1


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``lapis-overlay`` and ``mount.fuse.lapis-overlay``."""
    args = list(sys.argv[1:] if argv is None else argv)
    run_dir = os.environ.get("LAPIS_OVERLAY_RUN_DIR", opts.RUN_DIR)
    if args[:1] == ["--unmount"] and len(args) == 2:
        return unmount(args[1], run_dir)
    try:
        helper = opts.parse_helper_argv(args)
        config = opts.build_config(str(Path(helper.mountpoint).absolute()), helper.options)
        if not (HAS_PYFUSE3 and HAS_TRIO):
            raise SetupError("pyfuse3 and trio are needed; install them for this Python")
        check_layers(config)
    except (opts.OptionError, SetupError) as exc:
        sys.stderr.write(f"lapis-overlay: {exc}\n")
        return 1
    config.logfile = config.logfile or opts.default_logfile(config.mountpoint)
    os.umask(0)
    if helper.foreground:
        _setup_logging(config.logfile)
        return serve(config, run_dir, None)
    return _fork_and_serve(config, run_dir)


def unmount(mountpoint: str, run_dir: str) -> int:
    """``lapis-overlay --unmount PATH``: umount(8), then wait until the daemon has exited.

    The daemon exits by itself once its mount is gone; one that does not (another mount
    namespace still holds the mount) gets SIGTERM, then SIGKILL, and a warning.
    """
    path = os.path.normpath(str(Path(mountpoint).absolute()))
    state = install.daemon_state(path, run_dir)
    proc = subprocess.run(["umount", path], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr or f"umount {path}: exit code {proc.returncode}\n")
        return proc.returncode
    if state is not None and not install.wait_for_exit(state["pid"]):
        sys.stderr.write(
            f"lapis-overlay: the daemon {state['pid']} of {path} did not exit after the "
            "unmount (another mount namespace may hold the mount); it was stopped\n"
        )
    return 0


def _fork_and_serve(config: opts.OverlayConfig, run_dir: str) -> int:
    Path(config.logfile or "/").parent.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        return _wait_ready(read_fd, pid)
    os.close(read_fd)
    status = 1
    try:
        _detach(config.logfile or os.devnull)
        _setup_logging(config.logfile or os.devnull)
        status = serve(config, run_dir, write_fd)
    except BaseException as exc:  # report anything to the waiting parent, then exit
        _report(write_fd, exc)
    finally:
        os._exit(status)


def _report(fd: int, exc: BaseException) -> None:
    try:
        os.write(fd, f"cannot mount: {exc}".encode())
        os.close(fd)
    except OSError:
        pass
