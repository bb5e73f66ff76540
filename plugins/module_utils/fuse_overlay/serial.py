# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Serve pyfuse3's session loop one request after the other, without an event loop.

``pyfuse3.main()`` runs its session loop on trio: it reads the module attribute
``pyfuse3.trio`` for every name it needs (``pyfuse3.asyncio.enable()`` swaps in an
asyncio stand-in the same way). Under trio every request costs a round of the event
loop: an epoll registration and wait, a lock, a task switch. A profile of the daemon
shows that round to be most of its time per request, more than the union logic.

Our request handlers never wait for anything, so one task serving requests in turn is
enough. ``SerialRuntime`` provides the few trio names pyfuse3 uses: waiting for the
FUSE device is the blocking read of the next request, a lock is never contended, and a
nursery runs each task to its end. ``serve()`` installs it for the time of
``pyfuse3.main()`` and turns SIGTERM/SIGINT into a lazy unmount, as the trio version of
the daemon does.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import signal
import subprocess
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any, List, Optional

log = logging.getLogger("lapis.fuse_overlay")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ClosedResourceError(Exception):
    """The FUSE device was closed while waiting for it (``trio.ClosedResourceError``)."""


class SuspendedError(RuntimeError):
    """A task tried to wait for something other than the FUSE device."""


def run_to_end(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends; its return value."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise SuspendedError("a FUSE request handler waited for an event loop; none is running")


class _Task:
    name = "pyfuse-serial"


class _Lowlevel:
    """``trio.lowlevel``: the current task and token, and waiting for a file descriptor."""

    def __init__(self) -> None:
        self._poll: Optional[Any] = None
        self._fd = -1
        self._blocking = False

    def current_trio_token(self) -> str:
        return "serial"

    def current_task(self) -> _Task:
        return _Task()

    async def wait_readable(self, fd: int) -> None:
        """Return when ``fd`` can be read without waiting elsewhere than in that read.

        On a blocking descriptor (the FUSE device, as libfuse opens it) the read itself
        waits for the next request, so this returns at once: a poll(2) before every
        request would be one system call more for nothing. A signal interrupts that read
        (EINTR) and pyfuse3 comes back here, where Python runs the signal handler.
        """
        if fd != self._fd:
            self._watch(fd)
        if self._blocking:
            return
        if self._poll is None:
            raise ClosedResourceError(f"file descriptor {fd} is closed")
        for _fd, events in self._poll.poll():
            if events & select.POLLNVAL:
                raise ClosedResourceError(f"file descriptor {fd} is closed")

    def _watch(self, fd: int) -> None:
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError as exc:
            raise ClosedResourceError(f"file descriptor {fd}: {exc.strerror}") from None
        self._fd = fd
        self._blocking = not flags & os.O_NONBLOCK
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def notify_closing(self, fd: int) -> None:
        """pyfuse3.terminate(): the next wait sees the session's exit flag first."""


class _Lock:
    """One task at a time runs anyway: the lock is always free."""

    async def __aenter__(self) -> _Lock:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class _Nursery:
    """Tasks started here run one after the other, each to its end, when the block ends."""

    def __init__(self) -> None:
        self.pending: List[Coroutine[Any, Any, Any]] = []

    async def __aenter__(self) -> _Nursery:
        return self

    def start_soon(self, func: Callable[..., Any], *args: Any, name: Optional[str] = None) -> None:
        self.pending.append(func(*args))

    async def __aexit__(self, *exc: object) -> None:
        while self.pending:
            run_to_end(self.pending.pop(0))


class SerialRuntime:
    """The part of the trio module that pyfuse3 uses, serving one request at a time."""

    ClosedResourceError = ClosedResourceError
    Lock = _Lock

    def __init__(self) -> None:
        self.lowlevel = _Lowlevel()

    def open_nursery(self) -> _Nursery:
        return _Nursery()


def supported(pyfuse3: Any) -> bool:
    """Whether this pyfuse3 takes its event loop from ``pyfuse3.trio`` with the calls this
    module provides: the 3.x series does; another major version runs on trio instead."""
    version = str(getattr(pyfuse3, "__version__", ""))
    return version.startswith("3.") and hasattr(pyfuse3, "trio") and hasattr(pyfuse3, "main")


def lazy_unmount_argv(mountpoint: str) -> List[str]:
    """The command that unmounts the union lazily, which ends the FUSE session."""
    return ["fusermount3", "-u", "-z", mountpoint]


class _LazyUnmount:
    """The first SIGTERM/SIGINT unmounts lazily, which ends the session; later ones kill."""

    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def __enter__(self) -> _LazyUnmount:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.handle)
        return self

    def handle(self, signum: int, frame: Optional[FrameType]) -> None:
        self.restore()
        log.info("signal %d: unmounting %s", signum, self.mountpoint)
        self.proc = subprocess.Popen(lazy_unmount_argv(self.mountpoint))

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def __exit__(self, *exc: object) -> None:
        self.restore()
        if self.proc is not None:
            self.proc.wait(timeout=30)


def serve(pyfuse3: Any, mountpoint: str) -> None:
    """``pyfuse3.main()`` on a ``SerialRuntime`` until the union is unmounted."""
    saved = pyfuse3.trio
    pyfuse3.trio = SerialRuntime()
    try:
        with _LazyUnmount(mountpoint):
            run_to_end(pyfuse3.main(1, 1))
    finally:
        pyfuse3.trio = saved
