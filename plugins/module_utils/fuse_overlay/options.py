# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Pure helpers of the FUSE overlay backend: options, on-disk format tests, state files.

Nothing here touches the filesystem except ``is_whiteout`` (which takes a stat result)
so the unit tests call every function directly.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

SUBTYPE = "lapis-overlay"
FSTYPE = "fuse." + SUBTYPE
RUN_DIR = "/run/lapis-layers/fuse-overlay"
LOG_DIR = "/var/log/lapis-layers"
WORK_SUBDIR = "work"

TRUSTED_PREFIX = "trusted.overlay."
USER_PREFIX = "user.overlay."

# Options mount(8) and fstab use that mean nothing to the union itself.
_GENERIC = frozenset(
    [
        "defaults",
        "auto",
        "noauto",
        "nofail",
        "_netdev",
        "user",
        "nouser",
        "users",
        "owner",
        "group",
        "sync",
        "async",
        "atime",
        "noatime",
        "relatime",
        "norelatime",
        "strictatime",
        "nostrictatime",
        "lazytime",
        "nolazytime",
        "diratime",
        "nodiratime",
        "iversion",
        "noiversion",
        "mand",
        "nomand",
        "loud",
        "silent",
        "rw",
    ]
)
# Options passed through to the FUSE mount (they change VFS behaviour, not the union).
_PASSED = frozenset(["ro", "exec", "noexec", "suid", "nosuid", "dev", "nodev"])
# Kernel overlay options whose "off" value is what this backend does anyway.
_KERNEL_OFF = {
    "redirect_dir": ("off", "nofollow", "follow"),
    "index": ("off",),
    "metacopy": ("off",),
    "nfs_export": ("off",),
    "xino": ("off", "auto"),
    "uuid": ("on", "off", "null", "auto"),
}


class OptionError(ValueError):
    """A mount option the FUSE overlay backend cannot honour, with the reason."""


@dataclass
class OverlayConfig:
    """Everything the daemon needs to serve one union."""

    mountpoint: str
    lowerdirs: List[str]
    upperdir: Optional[str] = None
    workdir: Optional[str] = None
    userxattr: bool = False
    logfile: Optional[str] = None
    fuse_options: List[str] = field(default_factory=list)
    volatile: bool = False

    @property
    def readonly(self) -> bool:
        """A union without an upperdir (or mounted ``ro``) cannot be written."""
        return self.upperdir is None or "ro" in self.fuse_options


def split_escaped(text: str, sep: str) -> List[str]:
    """Split ``text`` on ``sep``; a backslash makes the next character literal."""
    parts: List[str] = []
    current: List[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            current.append(next(chars, "\\"))
        elif char == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def escape_path(path: str) -> str:
    """Escape a path for ``lowerdir=``/``upperdir=`` inside a comma-separated option list."""
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def parse_option_string(text: str) -> List[Tuple[str, Optional[str]]]:
    """``a=b,c`` -> ``[("a", "b"), ("c", None)]``, honouring backslash-escaped commas."""
    pairs: List[Tuple[str, Optional[str]]] = []
    for item in _split_keep_escapes(text, ","):
        if not item:
            continue
        key, eq, value = item.partition("=")
        pairs.append((key, value if eq else None))
    return pairs


def _split_keep_escapes(text: str, sep: str) -> List[str]:
    """Split on unescaped ``sep`` but keep the backslashes for the second-level split."""
    parts: List[str] = []
    start = 0
    index = 0
    while index < len(text):
        if text[index] == "\\":
            index += 2
            continue
        if text[index] == sep:
            parts.append(text[start:index])
            start = index + 1
        index += 1
    parts.append(text[start:])
    return parts


def _unescape(text: str) -> str:
    return "".join(split_escaped(text, "\0"))


def build_config(mountpoint: str, option_text: str) -> OverlayConfig:
    """Turn a mount helper's ``-o`` string into an ``OverlayConfig`` or raise ``OptionError``."""
    config = OverlayConfig(mountpoint=mountpoint, lowerdirs=[])
    for key, value in parse_option_string(option_text):
        _apply_option(config, key, value)
    _check_config(config)
    return config


def _apply_option(config: OverlayConfig, key: str, value: Optional[str]) -> None:
    if key == "lowerdir" and value:
        config.lowerdirs = [p for p in split_escaped(value, ":") if p]
    elif key in ("upperdir", "workdir", "logfile") and value:
        setattr(config, key, _unescape(value))
    elif key == "userxattr" and value is None:
        config.userxattr = True
    elif key == "volatile" and value is None:
        config.volatile = True
    elif key in _KERNEL_OFF:
        if value not in _KERNEL_OFF[key]:
            raise OptionError(
                f"overlay option {key}={value} is not supported by the fuse backend; "
                f"use one of {', '.join(_KERNEL_OFF[key])} or the kernel backend"
            )
    elif key in _PASSED and value is None:
        config.fuse_options.append(key)
    elif (
        key in _GENERIC
        or key.startswith(("x-", "comment="))
        or key in ("fsname", "subtype")
        or key in ("allow_other", "default_permissions")
    ):
        return
    else:
        raise OptionError(
            f"unknown mount option {key!r} for {FSTYPE}; the fuse backend accepts lowerdir, "
            "upperdir, workdir, userxattr, volatile, logfile and the generic mount options"
        )


def _check_config(config: OverlayConfig) -> None:
    if not config.lowerdirs:
        raise OptionError(f"{FSTYPE} on {config.mountpoint}: lowerdir= is required")
    if (config.upperdir is None) != (config.workdir is None):
        raise OptionError(
            f"{FSTYPE} on {config.mountpoint}: upperdir and workdir go together; give both "
            "or neither (neither gives a read-only union)"
        )
    if config.upperdir and config.workdir:
        upper = config.upperdir.rstrip("/") + "/"
        work = config.workdir.rstrip("/") + "/"
        if work.startswith(upper) or upper.startswith(work):
            raise OptionError(
                f"{FSTYPE} on {config.mountpoint}: workdir {config.workdir} and upperdir "
                f"{config.upperdir} must not be inside each other; use sibling directories"
            )


def format_options(config: OverlayConfig) -> str:
    """The ``-o`` string (and fstab field) that ``build_config`` turns back into ``config``."""
    parts = ["lowerdir=" + ":".join(escape_path(p) for p in config.lowerdirs)]
    if config.upperdir and config.workdir:
        parts.append("upperdir=" + escape_path(config.upperdir))
        parts.append("workdir=" + escape_path(config.workdir))
    if config.userxattr:
        parts.append("userxattr")
    if config.volatile:
        parts.append("volatile")
    if config.logfile:
        parts.append("logfile=" + escape_path(config.logfile))
    parts.extend(config.fuse_options)
    return ",".join(parts)


@dataclass
class HelperArgs:
    """Arguments as mount(8) and mount.fuse3 pass them to ``mount.<type>`` helpers."""

    source: str
    mountpoint: str
    options: str
    foreground: bool = False


def parse_helper_argv(argv: List[str]) -> HelperArgs:
    """Parse ``SOURCE MOUNTPOINT [-o OPTS] [-n] [-s] [-v] [-f] [-t TYPE] [-N NS]``."""
    positional: List[str] = []
    options: List[str] = []
    foreground = False
    args = iter(argv)
    for arg in args:
        if arg == "-o":
            options.append(next(args, ""))
        elif arg.startswith("-o") and len(arg) > 2:
            options.append(arg[2:])
        elif arg in ("-t", "-N"):
            next(args, None)
        elif arg == "-f":
            foreground = True
        elif arg in ("-n", "-s", "-v", "-r", "-w"):
            continue
        elif arg.startswith("-") and arg != "-":
            raise OptionError(f"unknown argument {arg!r}; usage: SOURCE MOUNTPOINT -o OPTIONS")
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise OptionError("usage: lapis-overlay SOURCE MOUNTPOINT -o lowerdir=...[,upperdir=...]")
    return HelperArgs(positional[0], positional[1], ",".join(o for o in options if o), foreground)


def is_whiteout(st: os.stat_result) -> bool:
    """The kernel's whiteout: a character device with device number 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def opaque_xattr(userxattr: bool) -> str:
    """Name of the xattr that marks an opaque directory."""
    return (USER_PREFIX if userxattr else TRUSTED_PREFIX) + "opaque"


def is_private_xattr(name: str, userxattr: bool) -> bool:
    """Overlay-internal xattrs are hidden from users and not copied up."""
    return name.startswith(TRUSTED_PREFIX) or (userxattr and name.startswith(USER_PREFIX))


def state_key(mountpoint: str) -> str:
    """A file name that stands for one mount point."""
    digest = hashlib.sha256(os.path.normpath(mountpoint).encode("utf-8", "surrogateescape"))
    return "mnt-" + digest.hexdigest()[:20]


def state_paths(mountpoint: str, run_dir: str = RUN_DIR) -> Tuple[str, str]:
    """``(pid file, state file)`` of the daemon serving ``mountpoint``."""
    key = state_key(mountpoint)
    run = run_dir.rstrip("/")
    return f"{run}/{key}.pid", f"{run}/{key}.json"


def default_logfile(mountpoint: str) -> str:
    """Where a daemon logs when the mount options name no ``logfile``."""
    return f"{LOG_DIR}/fuse-overlay-{state_key(mountpoint)}.log"
