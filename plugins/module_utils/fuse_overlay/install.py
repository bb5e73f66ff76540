# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Install the ``lapis-overlay`` daemon on a managed host, and find and stop running ones.

Modules reach a host zipped and temporary, so the daemon that must outlive the task is
installed persistently: the package's files go to ``/usr/local/lib/lapis-layers/
lapis_fuse_overlay/``, a launcher ``/usr/local/bin/lapis-overlay`` runs them with the
Python that has pyfuse3, and ``/sbin/mount.fuse.lapis-overlay`` links to the launcher.
mount(8) runs ``/sbin/mount.<fstype>`` for ``-t fuse.lapis-overlay`` (and fstab), and
``mount.fuse3`` runs the subtype's program ``lapis-overlay`` from PATH, so both ways in
end at the same program.
"""

from __future__ import annotations

import json
import os
import pkgutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from . import options as opts

LIB_DIR = "/usr/local/lib/lapis-layers"
PACKAGE = "lapis_fuse_overlay"
LAUNCHER = "/usr/local/bin/" + opts.SUBTYPE
HELPER = "/sbin/mount." + opts.FSTYPE
SOURCES = ("__init__.py", "options.py", "unionfs.py", "install.py", "serial.py", "daemon.py")


@dataclass
class InstallPlan:
    """Files to write (path -> content, mode) and the helper link; ``changes`` lists paths."""

    files: Dict[str, Tuple[bytes, int]]
    helper: str
    launcher: str
    changes: List[str] = field(default_factory=list)


def launcher_text(python: str, lib_dir: str) -> str:
    """The launcher script: a shebang for the Python with pyfuse3, then the daemon."""
    return (
        f"#!{python}\n"
        "# Installed by lapis.layers: the FUSE overlay daemon and mount helper.\n"
        "import sys\n"
        f"sys.path.insert(0, {lib_dir!r})\n"
        f"from {PACKAGE}.daemon import main\n"
        "sys.exit(main())\n"
    )


def _source(name: str) -> bytes:
    data = pkgutil.get_data(__package__ or __name__.rpartition(".")[0], name)
    if data is None:
        raise OSError(f"cannot read {name} of the fuse_overlay package")
    return data


def plan_install(
    python: str, lib_dir: str = LIB_DIR, launcher: str = LAUNCHER, helper: str = HELPER
) -> InstallPlan:
    """What must be written so that the daemon and mount helper are current."""
    files: Dict[str, Tuple[bytes, int]] = {
        f"{lib_dir}/{PACKAGE}/{name}": (_source(name), 0o644) for name in SOURCES
    }
    files[launcher] = (launcher_text(python, lib_dir).encode(), 0o755)
    plan = InstallPlan(files=files, helper=helper, launcher=launcher)
    for path, (content, mode) in files.items():
        if _differs(path, content, mode):
            plan.changes.append(path)
    if _link_target(helper) != launcher:
        plan.changes.append(helper)
    return plan


def _differs(path: str, content: bytes, mode: int) -> bool:
    try:
        current = Path(path).read_bytes()
        return current != content or (Path(path).stat().st_mode & 0o7777) != mode
    except OSError:
        return True


def _link_target(path: str) -> Optional[str]:
    try:
        return str(Path(path).readlink())
    except OSError:
        return None


def apply_install(plan: InstallPlan) -> None:
    """Write the planned files atomically (temp file, then rename) and link the helper."""
    for path in plan.changes:
        if path == plan.helper:
            _link(plan.launcher, path)
        else:
            content, mode = plan.files[path]
            write_atomic(path, content, mode)


def write_atomic(path: str, content: bytes, mode: int) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(content)
        tmp.chmod(mode)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _link(target: str, path: str) -> None:
    link = Path(path)
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)


# -- running daemons -----------------------------------------------------------------------


def pid_state(pid: int) -> Optional[str]:
    """The process state letter (R, S, Z, ...) or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    """Running and not merely waiting to be reaped."""
    return pid_state(pid) not in (None, "Z", "X")


def daemon_state(mountpoint: str, run_dir: str = opts.RUN_DIR) -> Optional[Dict[str, Any]]:
    """The state the daemon serving ``mountpoint`` wrote, when that daemon still runs."""
    state_path = opts.state_paths(mountpoint, run_dir)[1]
    try:
        state: Dict[str, Any] = json.loads(Path(state_path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state.get("pid"), int) or not alive(state["pid"]):
        return None
    return state


def wait_for_exit(pid: int, timeout: float = 10.0) -> bool:
    """After an unmount the daemon exits by itself; wait for it, then SIGTERM, then KILL."""
    for signum in (None, signal.SIGTERM, signal.SIGKILL):
        if signum is not None and alive(pid):
            os.kill(pid, signum)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive(pid):
                return signum is None
            time.sleep(0.05)
    return not alive(pid)


def mount_argv(config: opts.OverlayConfig, mount_bin: str = "mount") -> List[str]:
    """``mount -t fuse.lapis-overlay lapis-overlay PATH -o OPTIONS`` for one union."""
    return [
        mount_bin,
        "-t",
        opts.FSTYPE,
        opts.SUBTYPE,
        config.mountpoint,
        "-o",
        opts.format_options(config),
    ]
