"""The serial stand-in for trio: pyfuse3's session loop run without an event loop."""

import os
import signal
import types
from typing import Any

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.fuse_overlay import serial


async def _answer(value: int) -> int:
    return value


async def _waits_for_an_event_loop() -> None:
    await types.coroutine(lambda: (yield "suspend"))()


def test_a_coroutine_that_never_suspends_runs_to_its_value() -> None:
    assert serial.run_to_end(_answer(7)) == 7


def test_a_coroutine_that_suspends_is_refused() -> None:
    with pytest.raises(serial.SuspendedError, match="waited for an event loop"):
        serial.run_to_end(_waits_for_an_event_loop())


def test_nursery_runs_every_started_task_including_ones_started_by_tasks() -> None:
    runtime = serial.SerialRuntime()
    done: list[str] = []

    async def task(name: str, nursery: Any) -> None:
        done.append(name)
        if name == "first":
            nursery.start_soon(task, "second", nursery, name="pyfuse-02")

    async def main() -> None:
        async with runtime.open_nursery() as nursery:
            nursery.start_soon(task, "first", nursery, name="pyfuse-01")
        done.append("after")

    serial.run_to_end(main())
    assert done == ["first", "second", "after"]


def test_wait_readable_leaves_the_wait_to_the_read_on_a_blocking_descriptor() -> None:
    runtime = serial.SerialRuntime()
    read_fd, write_fd = os.pipe()
    try:
        serial.run_to_end(runtime.lowlevel.wait_readable(read_fd))  # nothing written yet
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_wait_readable_polls_a_non_blocking_descriptor_until_it_has_data() -> None:
    runtime = serial.SerialRuntime()
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    try:
        os.write(write_fd, b"request")
        serial.run_to_end(runtime.lowlevel.wait_readable(read_fd))
        assert os.read(read_fd, 16) == b"request"
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_wait_readable_on_a_closed_descriptor_raises_closed_resource_error() -> None:
    runtime = serial.SerialRuntime()
    read_fd, write_fd = os.pipe()
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    serial.run_to_end(runtime.lowlevel.wait_readable(read_fd))  # end of file: readable
    os.close(read_fd)
    with pytest.raises(runtime.ClosedResourceError):
        serial.run_to_end(runtime.lowlevel.wait_readable(read_fd))
    with pytest.raises(runtime.ClosedResourceError):
        serial.run_to_end(serial.SerialRuntime().lowlevel.wait_readable(read_fd))


def test_the_lock_is_an_async_context_manager() -> None:
    runtime = serial.SerialRuntime()

    async def locked() -> str:
        async with runtime.Lock():
            return "inside"

    assert serial.run_to_end(locked()) == "inside"


class FakePyfuse3:
    """Stands for the pyfuse3 module: main() uses whatever ``trio`` holds at the time."""

    __version__ = "3.5.0"

    def __init__(self) -> None:
        self.trio: Any = "the trio module"
        self.seen: list[Any] = []

    async def main(self, min_tasks: int, max_tasks: int) -> None:
        self.seen.append((self.trio, min_tasks, max_tasks))


def test_serve_installs_the_runtime_for_main_only_and_restores_signal_handlers() -> None:
    fake = FakePyfuse3()
    before = {signum: signal.getsignal(signum) for signum in serial.STOP_SIGNALS}
    serial.serve(fake, "/nonexistent")
    assert isinstance(fake.seen[0][0], serial.SerialRuntime)
    assert fake.seen[0][1:] == (1, 1)
    assert fake.trio == "the trio module"
    assert {signum: signal.getsignal(signum) for signum in serial.STOP_SIGNALS} == before


def test_supported_needs_pyfuse3_3_with_the_trio_attribute() -> None:
    assert serial.supported(FakePyfuse3())
    assert not serial.supported(types.SimpleNamespace(__version__="3.5.0", main=None))
    later = FakePyfuse3()
    later.__version__ = "4.0.0"
    assert not serial.supported(later)


def test_the_installed_pyfuse3_is_supported() -> None:
    pyfuse3 = pytest.importorskip("pyfuse3")
    assert serial.supported(pyfuse3)
