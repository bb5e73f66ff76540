# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Ask the kernel why a mount fails, through the mount API's message log.

``mount(8)`` from util-linux 2.38 reports a refused overlay only as "wrong fs type, bad
option"; the reason goes to the kernel log, which is often not readable.  The new mount
API (``fsopen``/``fsconfig``, Linux 5.2+) returns the same messages on the file
descriptor of the file system context.  :func:`kernel_messages` configures a context
with the same options, asks the kernel to create the superblock, reads the messages and
closes the context again: nothing is mounted.  It is used only after a mount has failed.
"""

from __future__ import annotations

import ctypes
import os
import platform

from ansible_collections.lapis.layers.plugins.module_utils.overlay import (
    OverlaySpec,
    classify_option,
)

# Syscall numbers of the mount API: the same on every architecture but alpha (Linux 5.2+).
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6


def spec_parameters(spec: OverlaySpec) -> list[tuple[str, str | None]]:
    """The spec as file system parameters: (key, value), value ``None`` for a flag."""
    params: list[tuple[str, str | None]] = []
    for option in (*spec.layer_options(), *spec.overlay_options()):
        key, sep, value = option.partition("=")
        params.append((key, value if sep else None))
    if "ro" in spec.vfs_options():
        params.append(("ro", None))
    return [param for param in params if classify_option(param[0]) != "vfs" or param[0] == "ro"]


def kernel_messages(fstype: str, params: list[tuple[str, str | None]]) -> list[str]:
    """The kernel's messages for creating a ``fstype`` superblock with ``params``.

    Returns an empty list where the mount API is missing or not usable.
    """
    if platform.system() != "Linux" or platform.machine().startswith("alpha"):
        return []
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return []
    fd = syscall(SYS_FSOPEN, fstype.encode(), FSOPEN_CLOEXEC)
    if fd < 0:
        return []
    try:
        for key, value in params:
            if value is None:
                rc = syscall(SYS_FSCONFIG, fd, FSCONFIG_SET_FLAG, key.encode(), None, 0)
            else:
                rc = syscall(SYS_FSCONFIG, fd, FSCONFIG_SET_STRING, key.encode(), value.encode(), 0)
            if rc < 0:
                break
        else:
            syscall(SYS_FSCONFIG, fd, FSCONFIG_CMD_CREATE, None, None, 0)
        return read_messages(fd)
    finally:
        os.close(fd)


def read_messages(fd: int) -> list[str]:
    """Drain the message log of a file system context (``e``/``w``/``i`` prefixes dropped)."""
    messages: list[str] = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # ENODATA: the log is empty
            return messages
        if not data:
            return messages
        text = data.decode("utf-8", errors="replace").strip()
        messages.append(text[2:] if text[:2] in ("e ", "w ", "i ") else text)


def overlay_failure_reason(spec: OverlaySpec) -> list[str]:
    """What the kernel says about mounting ``spec``; empty when it says nothing."""
    return kernel_messages("overlay", spec_parameters(spec))
