# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Driver for an OCI runtime binary (runc; crun where it works) and for conmon.

Every call builds the exact command line, runs it, and turns a failure into
:class:`OCIRuntimeError` carrying the command, rc, stdout and stderr. The runtime keeps its
state under ``root`` (``runc --root``), so containers of different stores never meet.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUNTIME_NAMES = ("runc", "crun")
STATUSES = ("creating", "created", "running", "stopped", "paused")


class OCIRuntimeError(Exception):
    """A runtime command failed; ``cmd``, ``rc``, ``stdout`` and ``stderr`` say how."""

    def __init__(
        self, message: str, cmd: list[str] | None = None, rc: int = 1, stdout: str = "",
        stderr: str = "",
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.cmd = cmd or []
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr


@dataclass
class RuntimeState:
    """What ``runtime state ID`` reports (see the runtime-spec ``state`` schema)."""

    id: str
    status: str
    pid: int
    bundle: str
    created: str = ""
    annotations: dict[str, str] = field(default_factory=dict)


def parse_state(text: str) -> RuntimeState:
    """Parse the JSON printed by ``runc state`` / ``crun state``."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise OCIRuntimeError(f"Runtime state is not JSON: {exc}: {text[:200]!r}") from exc
    if not isinstance(data, dict) or "id" not in data or "status" not in data:
        raise OCIRuntimeError(f"Runtime state lacks id or status: {text[:200]!r}")
    return RuntimeState(
        id=str(data["id"]),
        status=str(data["status"]),
        pid=int(data.get("pid") or 0),
        bundle=str(data.get("bundle") or ""),
        created=str(data.get("created") or ""),
        annotations=dict(data.get("annotations") or {}),
    )


def find_runtime(choice: str = "auto") -> str:
    """Absolute path of the runtime binary for ``auto``, ``runc``, ``crun`` or a path."""
    if choice == "auto":
        for name in RUNTIME_NAMES:
            found = shutil.which(name)
            if found:
                return found
        raise OCIRuntimeError(
            "No OCI runtime found: neither runc nor crun is on PATH. "
            "Install runc (Debian package runc) or set runtime to its path."
        )
    if "/" in choice:
        if Path(choice).is_file() and os.access(choice, os.X_OK):
            return choice
        raise OCIRuntimeError(f"Runtime {choice} does not exist or is not executable.")
    found = shutil.which(choice)
    if not found:
        raise OCIRuntimeError(
            f"Runtime {choice!r} is not on PATH. Install it or set runtime to its full path."
        )
    return found


def signal_number(name: str | int) -> int:
    """``SIGTERM``, ``TERM``, ``15`` or 15 as a signal number."""
    if isinstance(name, int) or str(name).isdigit():
        return int(name)
    text = str(name).upper()
    text = text if text.startswith("SIG") else "SIG" + text
    try:
        return int(signal.Signals[text])
    except KeyError:
        raise OCIRuntimeError(f"Unknown signal {name!r}.") from None


class OCIRuntime:
    """One runtime binary with its own state directory."""

    def __init__(self, binary: str, root: str) -> None:
        self.binary = binary
        self.root = root

    @property
    def name(self) -> str:
        return Path(self.binary).name

    def command(self, *args: str) -> list[str]:
        """The full command line for a runtime subcommand."""
        return [self.binary, "--root", self.root, *args]

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = self.command(*args)
        proc = subprocess.run(
            cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
        )
        if check and proc.returncode != 0:
            raise OCIRuntimeError(
                f"{self.name} {args[0]} failed (rc={proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}",
                cmd,
                proc.returncode,
                proc.stdout,
                proc.stderr,
            )
        return proc

    def state(self, container_id: str) -> RuntimeState | None:
        """The container's state, or None when the runtime does not know it.

        runc and crun keep a container's state in ``<root>/<id>/``; without that directory
        the runtime does not know the container, and no process is started to ask it.
        """
        if not Path(self.root, container_id).exists():
            return None
        proc = self._run("state", container_id, check=False)
        if proc.returncode != 0:
            if "does not exist" in proc.stderr or "not found" in proc.stderr.lower():
                return None
            if not Path(self.root, container_id).exists():
                return None
            raise OCIRuntimeError(
                f"{self.name} state {container_id} failed: {proc.stderr.strip()}",
                self.command("state", container_id),
                proc.returncode,
                proc.stdout,
                proc.stderr,
            )
        return parse_state(proc.stdout)

    def list_ids(self) -> list[str]:
        """Ids of every container under this runtime root."""
        proc = self._run("list", "--format", "json")
        data = json.loads(proc.stdout or "null") or []
        return sorted(str(item["id"]) for item in data)

    def run(
        self, container_id: str, bundle: str, timeout: float | None = None
    ) -> tuple[int, str, str]:
        """Run the container in the foreground; (rc, stdout, stderr) of its process."""
        cmd = self.command("run", "--bundle", bundle, container_id)
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
                timeout=timeout,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            self.kill(container_id, "SIGKILL", check=False)
            raise OCIRuntimeError(
                f"Container {container_id} did not finish within {timeout} seconds; killed.",
                cmd,
            ) from exc
        return proc.returncode, proc.stdout, proc.stderr

    def create(self, container_id: str, bundle: str, pid_file: str) -> None:
        self._run("create", "--bundle", bundle, "--pid-file", pid_file, container_id)

    def start(self, container_id: str) -> None:
        self._run("start", container_id)

    def kill(self, container_id: str, sig: str | int = "SIGTERM", check: bool = True) -> None:
        """Send ``sig`` to the container's init process (and so its whole pid namespace)."""
        self._run("kill", container_id, str(signal_number(sig)), check=check)

    def delete(self, container_id: str, force: bool = False) -> None:
        args = ["delete", "--force", container_id] if force else ["delete", container_id]
        proc = self._run(*args, check=False)
        if proc.returncode != 0 and self.state(container_id) is not None:
            raise OCIRuntimeError(
                f"{self.name} delete {container_id} failed: {proc.stderr.strip()}",
                self.command(*args),
                proc.returncode,
                proc.stdout,
                proc.stderr,
            )

    def wait_status(
        self, container_id: str, statuses: tuple[str, ...], timeout: float
    ) -> RuntimeState | None:
        """Poll until the container's status is one of ``statuses`` (or it is gone)."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            state = self.state(container_id)
            if state is None or state.status in statuses:
                return state
            if time.monotonic() >= deadline:
                return state
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


# --- detached start: conmon, or the runtime's detached mode with our reaper ------------------


@dataclass
class DetachedPaths:
    """Where a detached container's monitor writes its files."""

    bundle: str
    pid_file: str
    monitor_pid_file: str
    log_file: str
    exit_dir: str


def conmon_command(
    runtime: OCIRuntime, conmon: str, container_id: str, paths: DetachedPaths
) -> list[str]:
    """The conmon command line that creates the container with stdout/stderr logged."""
    return [
        conmon,
        "--api-version", "1",
        "--cid", container_id,
        "--cuuid", container_id,
        "--name", container_id,
        "--runtime", runtime.binary,
        "--runtime-arg", "--root",
        "--runtime-arg", runtime.root,
        "--bundle", paths.bundle,
        "--container-pidfile", paths.pid_file,
        "--conmon-pidfile", paths.monitor_pid_file,
        "--log-path", "k8s-file:" + paths.log_file,
        "--exit-dir", paths.exit_dir,
        "--socket-dir-path", paths.exit_dir,
        "--log-level", "error",
    ]  # fmt: skip


def _read_sync(fd: int, timeout: float) -> bytes:
    """Everything written to the sync pipe until a newline, EOF or the timeout."""
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable = select.select([fd], [], [], remaining)[0]
        if not readable:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def create_with_conmon(
    runtime: OCIRuntime, conmon: str, container_id: str, paths: DetachedPaths, timeout: float = 30
) -> int:
    """Have conmon create the container; returns the container's pid. Start it with ``start``.

    conmon daemonizes, holds the container's stdout and stderr and copies them to the log in
    the Kubernetes ``k8s-file`` format, and writes the exit code to ``exit_dir/ID`` when the
    container ends, long after this task is over.
    """
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, _OCI_SYNCPIPE=str(write_fd))
    cmd = conmon_command(runtime, conmon, container_id, paths)
    try:
        proc = subprocess.run(
            cmd, env=env, pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False,
        )  # fmt: skip
        os.close(write_fd)
        write_fd = -1
        reply = _read_sync(read_fd, timeout) if proc.returncode == 0 else b""
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    message = ""
    try:
        data = json.loads(reply.decode() or "{}")
        pid = int(data.get("data", -1))
        message = str(data.get("message", ""))
    except ValueError:
        pid = -1
    if proc.returncode != 0 or pid <= 0:
        log_tail = ""
        if Path(paths.log_file).is_file():
            log_tail = Path(paths.log_file).read_text(errors="replace")[-2000:]
        raise OCIRuntimeError(
            f"conmon could not create container {container_id}: "
            f"{message or proc.stderr.strip() or 'no reply'}",
            cmd,
            proc.returncode or 1,
            log_tail,
            proc.stderr,
        )
    return pid


def _set_child_subreaper() -> bool:
    """Make this process the reaper of orphaned descendants (Linux prctl)."""
    try:
        import ctypes  # noqa: PLC0415 - only the reaper needs it

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_child_subreaper = 36
        return bool(libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _reaper_main(runtime: OCIRuntime, container_id: str, paths: DetachedPaths, report: int) -> int:
    """Body of the reaper process: run the container detached, wait for it, record its exit."""
    _set_child_subreaper()
    log_fd = os.open(paths.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    cmd = runtime.command(
        "run", "--detach", "--bundle", paths.bundle, "--pid-file", paths.pid_file, container_id
    )
    proc = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, check=False,
        pass_fds=(),
    )  # fmt: skip
    os.close(log_fd)
    if proc.returncode != 0:
        os.write(report, f"error {proc.returncode}\n".encode())
        return 1
    pid = int(Path(paths.pid_file).read_text().strip())
    os.write(report, f"ok {pid}\n".encode())
    os.close(report)
    status = _wait_for(pid)
    exit_file = Path(paths.exit_dir, container_id)
    tmp = exit_file.with_name(exit_file.name + ".tmp")
    tmp.write_text(str(status))
    tmp.replace(exit_file)
    return 0


def _wait_for(pid: int) -> int:
    """Reap children until ``pid`` has exited; its exit code (128+N when killed by N)."""
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return -1
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
        if got == pid:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else (
                128 + os.WTERMSIG(status)
            )  # fmt: skip


def create_with_reaper(
    runtime: OCIRuntime, container_id: str, paths: DetachedPaths, timeout: float = 30
) -> int:
    """Start the container with ``runtime run --detach`` under a small daemonized reaper.

    The reaper (a double-forked copy of this Python process, so it outlives the task and the
    module's temporary files) is a child subreaper: the container's init becomes its child, so
    it can wait for it and write the exit code to ``exit_dir/ID``. The container's stdout and
    stderr go straight to the log file. Returns the container's pid; it is already running.
    """
    read_fd, write_fd = os.pipe()
    first = os.fork()
    if first == 0:  # pragma: no cover - runs in the forked reaper, outside coverage
        code = 1
        try:
            os.close(read_fd)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.closerange(3, write_fd)
            os.closerange(write_fd + 1, 4096)
            Path(paths.monitor_pid_file).write_text(str(os.getpid()))
            code = _reaper_main(runtime, container_id, paths, write_fd)
        finally:
            os._exit(code)
    os.close(write_fd)
    os.waitpid(first, 0)
    try:
        reply = _read_sync(read_fd, timeout).decode().split()
    finally:
        os.close(read_fd)
    if len(reply) == 2 and reply[0] == "ok":
        return int(reply[1])
    log_tail = ""
    if Path(paths.log_file).is_file():
        log_tail = Path(paths.log_file).read_text(errors="replace")[-2000:]
    raise OCIRuntimeError(
        f"{runtime.name} run --detach could not start container {container_id}: "
        f"{log_tail.strip() or 'no reply from the reaper'}",
        runtime.command("run", "--detach", "--bundle", paths.bundle, container_id),
        1,
        "",
        log_tail,
    )


def process_alive(pid: int) -> bool:
    """Whether ``pid`` exists (and is not a zombie)."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def read_json(path: str) -> Any:
    """Parsed JSON of ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
