# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The fuse backend of ``overlay_mount`` and the choice between it and the kernel's.

:class:`FuseOverlay` gives ``overlay_plan`` the same commands ``KernelOverlay`` gives:
``mount -t fuse.lapis-overlay`` (mount(8) runs the installed mount helper, which starts
the daemon and returns once the union is mounted), ``lapis-overlay --unmount`` (unmounts
and waits for the daemon to exit) and a remount of the per-mount flags. The mount table
does not show a FUSE mount's layers, so :func:`describe_live` reads them from the state
file the daemon serving the mount point wrote. :func:`choose_backend` decides ``auto``.

This file is not installed on the managed host with the daemon (see ``install.SOURCES``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ansible_collections.lapis.layers.plugins.module_utils.fstab import FstabEntry
from ansible_collections.lapis.layers.plugins.module_utils.mountinfo import (
    LiveOverlay,
    read_mountinfo,
)
from ansible_collections.lapis.layers.plugins.module_utils.overlay import (
    OverlayError,
    OverlaySpec,
    classify_option,
)
from ansible_collections.lapis.layers.plugins.module_utils.overlay_checks import (
    check_kernel,
    check_layers,
)
from ansible_collections.lapis.layers.plugins.module_utils.overlay_plan import OverlayBackend

from . import daemon, install
from . import options as opts
from .unionfs import HAS_PYFUSE3

BACKENDS = ("kernel", "fuse", "auto")
# install copies the daemon's source files to the host; AnsiballZ ships only what a
# module imports, so the daemon is imported here.
SHIPPED_MODULES = (daemon.__name__, install.__name__)
FUSE_DEVICE = "/dev/fuse"


def fuse_config(spec: OverlaySpec, logfile: str | None = None) -> opts.OverlayConfig:
    """The daemon's configuration for ``spec``; raises when an option has no fuse meaning."""
    wanted = [o for o in spec.options if classify_option(o) != "fstab"]
    if spec.read_only_union and "ro" not in wanted:
        wanted.insert(0, "ro")
    config = opts.OverlayConfig(spec.path, list(spec.lowerdirs), spec.upperdir, spec.workdir)
    config.logfile = logfile or opts.default_logfile(spec.path)
    text = ",".join([opts.format_options(config), *wanted])
    try:
        return opts.build_config(spec.path, text)
    except opts.OptionError as exc:
        raise OverlayError(
            f"overlay {spec.path}: {exc}", "Remove the option, or use backend=kernel"
        ) from exc


class FuseOverlay:
    """The collection's pyfuse3 union, mounted and unmounted through mount(8)."""

    name = "fuse"

    def __init__(
        self,
        mount_bin: str = "mount",
        launcher: str = install.LAUNCHER,
        logfile: str | None = None,
    ) -> None:
        self.mount_bin = mount_bin
        self.launcher = launcher
        self.logfile = logfile

    def logfile_for(self, path: str) -> str:
        """Where the daemon serving ``path`` logs."""
        return self.logfile or opts.default_logfile(path)

    def option_string(self, spec: OverlaySpec) -> str:
        """``lowerdir=...,upperdir=...,workdir=...,logfile=...`` and the flags."""
        return opts.format_options(fuse_config(spec, self.logfile_for(spec.path)))

    def mount_argv(self, spec: OverlaySpec) -> list[str]:
        """``mount -t fuse.lapis-overlay -o OPTIONS lapis-overlay PATH``."""
        options = self.option_string(spec)
        return [self.mount_bin, "-t", opts.FSTYPE, "-o", options, opts.SUBTYPE, spec.path]

    def unmount_argv(self, path: str) -> list[str]:
        """``lapis-overlay --unmount PATH``: umount, then wait until the daemon has exited."""
        return [self.launcher, "--unmount", path]

    def remount_argv(self, path: str, flags: tuple[str, ...]) -> list[str]:
        """Per-mount flags change in the VFS alone: no helper (``-i``), no fstab."""
        options = ",".join(("remount", *flags))
        return [self.mount_bin, "-i", "--options-source", "disable", "-o", options, path]

    def fstab_entry(self, spec: OverlaySpec) -> FstabEntry:
        """``lapis-overlay PATH fuse.lapis-overlay OPTIONS 0 0``: mount -a runs the helper."""
        fstab_only = [o for o in spec.options if classify_option(o) == "fstab"]
        options = ",".join([self.option_string(spec), *fstab_only])
        return FstabEntry(opts.SUBTYPE, spec.path, opts.FSTYPE, options, "0", "0")

    def check_host(self) -> None:
        """The daemon needs pyfuse3 in this Python and the FUSE device."""
        if not HAS_PYFUSE3:
            raise OverlayError(
                "the fuse backend needs pyfuse3 (and trio) in the Python that runs the module",
                "Install them with 'pip install pyfuse3 trio' or the python3-pyfuse3 package",
            )
        if not Path(FUSE_DEVICE).exists():
            raise OverlayError(
                f"the fuse backend needs {FUSE_DEVICE}, which does not exist",
                "Load the fuse module ('modprobe fuse') or give the container /dev/fuse",
            )


def describe_live(live: LiveOverlay | None, run_dir: str = opts.RUN_DIR) -> LiveOverlay | None:
    """A ``fuse.lapis-overlay`` mount with the layers its daemon's state file names."""
    if live is None or live.fstype != opts.FSTYPE:
        return live
    state = install.daemon_state(live.mount_point, run_dir)
    if state is None:
        return live
    options = tuple(name for name in ("userxattr", "volatile") if state.get(name))
    if not options and "volatile" in str(state.get("options", "")).split(","):
        options = ("volatile",)
    return replace(
        live,
        lowerdirs=tuple(state.get("lowerdirs") or ()),
        upperdir=state.get("upperdir"),
        workdir=state.get("workdir"),
        options=options,
    )


def daemon_info(path: str, run_dir: str = opts.RUN_DIR) -> dict[str, object] | None:
    """Pid, log file and start time of the daemon serving ``path``, when one runs."""
    state = install.daemon_state(path, run_dir)
    if state is None:
        return None
    return {key: state.get(key) for key in ("pid", "logfile", "started")}


def choose_backend(
    requested: str,
    live: LiveOverlay | None,
    kernel_check: Callable[[], None],
) -> tuple[str, str]:
    """``(backend, why)`` for ``backend=requested``.

    ``auto`` keeps the backend of an overlay already mounted on the path; otherwise it is
    the kernel when ``kernel_check()`` (the kernel's preflight checks) passes and the
    process may mount, and fuse with the check's message when it does not.
    """
    if requested != "auto":
        return requested, f"backend={requested} was asked for"
    if live is not None and live.backend == "kernel":
        return "kernel", "a kernel overlay is mounted on the path"
    if live is not None and live.fstype == opts.FSTYPE:
        return "fuse", f"a {opts.FSTYPE} overlay is mounted on the path"
    if os.geteuid() != 0:
        return "fuse", "not running as root, so the kernel overlay cannot be mounted"
    try:
        kernel_check()
    except OverlayError as exc:
        return "fuse", f"the kernel overlay cannot be used: {exc.msg}"
    return "kernel", "the kernel has overlayfs and the layers pass its checks"


def kernel_checks(spec: OverlaySpec | None, probe: bool) -> Callable[[], None]:
    """The kernel backend's preflight checks, for :func:`choose_backend`."""

    def check() -> None:
        check_kernel()
        if spec is not None:
            check_layers(spec, read_mountinfo(), probe=probe)

    return check


def install_daemon(check_mode: bool, python: str = sys.executable) -> list[str]:
    """Install or update the daemon, launcher and mount helper; the paths that changed."""
    plan = install.plan_install(python)
    if plan.changes and not check_mode:
        try:
            install.apply_install(plan)
        except OSError as exc:
            raise OverlayError(
                f"cannot install the fuse overlay daemon: {exc}",
                f"Make {install.LIB_DIR}, {install.LAUNCHER} and {install.HELPER} writable",
            ) from exc
    return plan.changes


def select_backend(
    requested: str,
    spec: OverlaySpec | None,
    live: LiveOverlay | None,
    check_mode: bool,
    *,
    kernel: OverlayBackend,
    fuse: FuseOverlay,
) -> tuple[OverlayBackend, str]:
    """The backend object for ``backend=requested`` and why it was chosen."""
    name, why = choose_backend(requested, live, kernel_checks(spec, probe=not check_mode))
    return (fuse if name == "fuse" else kernel), why
