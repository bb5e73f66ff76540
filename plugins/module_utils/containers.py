# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Container lifecycle on top of the image store: overlay rootfs, bundle, runtime, monitor.

One directory per container::

    <store>/containers/<name>/
        container.json   what we created: image, digest, desired options, runtime, monitor,
                         timestamps (written atomically)
        chain-ids        the layer directories the container's overlay uses, one chain id a
                         line; the image store's garbage collection keeps them (written
                         by ``Store.use_image``, dropped by ``Store.release_container``)
        config.json      the OCI runtime config; the directory is the OCI bundle
        rootfs/          kernel overlay mount: lowerdir = image layers, upperdir = upper/
        upper/ work/     the container's own changes, and overlayfs' work directory
        log              the container's stdout and stderr
        exit/<name>      the exit code, written by the monitor when the process ends
        monitor.pid      pid of conmon or of our reaper; container.pid the container's init
    <store>/containers/.runtime/    the runtime's state root (``runc --root``)
    <store>/containers/.locks/      flock files, one per container name
    <store>/containers/.validated/  marks of config.json contents already found valid

The flow is gather (:func:`inspect`), decide (:func:`plan`), act (:func:`apply`): the plan is
a list of action names and a before/after diff, returned unchanged in check mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ansible_collections.lapis.layers.plugins.module_utils import oci_runtime as rt
from ansible_collections.lapis.layers.plugins.module_utils import oci_store
from ansible_collections.lapis.layers.plugins.module_utils import runtime_spec as rs

DEFAULT_STORE = "/var/lib/lapis"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ACTIVE = ("created", "running", "paused")
CONMON_PATHS = ("/usr/bin/conmon", "/usr/libexec/podman/conmon", "/usr/local/bin/conmon")
STOP_KILL_WAIT = 10.0
META = "container.json"


class ContainerError(Exception):
    """A container action failed; ``result`` carries rc/stdout/stderr/cmd when there are any."""

    def __init__(self, message: str, **result: Any) -> None:
        super().__init__(message)
        self.result = result


# --- images -------------------------------------------------------------------------------


@dataclass
class ImageUse:
    """An image a container runs from: its reference, digest, config and lowerdirs."""

    reference: str
    digest: str
    config: dict[str, Any]
    chain_ids: list[str]
    lowerdirs: list[str]


class ImageSource(Protocol):
    """Where images come from; the image store in production (:class:`StoreImages`)."""

    def lookup(self, reference: str) -> tuple[str, str]:
        """(full reference, manifest digest) of ``reference``, without unpacking anything."""

    def use(self, container: str, reference: str) -> ImageUse:
        """Unpack what is missing and record that ``container`` uses the image's layers."""

    def release(self, container: str) -> None:
        """Drop ``container``'s claim on layer directories."""


class StoreImages:
    """:class:`ImageSource` backed by the lapis.layers image store (``oci_store.Store``)."""

    def __init__(self, store: str) -> None:
        self.store = oci_store.Store(store)

    def lookup(self, reference: str) -> tuple[str, str]:
        try:
            image = self.store.resolve(reference)
        except oci_store.StoreError as exc:
            raise ContainerError(f"Unknown image {reference}: {exc}") from exc
        return image.reference, image.manifest_digest

    def use(self, container: str, reference: str) -> ImageUse:
        try:
            image, lowerdirs = self.store.use_image(container, reference)
        except oci_store.StoreError as exc:
            raise ContainerError(f"Cannot use image {reference}: {exc}") from exc
        return ImageUse(
            reference=image.reference,
            digest=image.manifest_digest,
            config=image.config,
            chain_ids=list(image.chain_ids),
            lowerdirs=[str(d) for d in lowerdirs],
        )

    def release(self, container: str) -> None:
        self.store.release_container(container)


# --- desired state ------------------------------------------------------------------------


@dataclass
class ContainerRequest:
    """Everything the user asked for one container."""

    name: str
    state: str = "started"
    image: str | None = None
    options: rs.ContainerOptions = field(default_factory=rs.ContainerOptions)
    runtime: str = "auto"
    monitor: str = "auto"
    stop_timeout: int = 10
    keep_upper: bool = False
    recreate: bool = False
    run_timeout: float | None = None


def desired_record(request: ContainerRequest, reference: str, digest: str) -> dict[str, Any]:
    """The fields compared for idempotence; a difference in any of them recreates."""
    options = asdict(request.options)
    for key in ("cgroups_path", "annotations", "root_path"):
        options.pop(key)
    options["mounts"] = [dict(m) for m in options["mounts"]]
    options["rlimits"] = {k: list(v) for k, v in sorted(options["rlimits"].items())}
    options["cap_add"] = sorted(rs.normalize_capability(c) for c in options["cap_add"])
    options["cap_drop"] = sorted(rs.normalize_capability(c) for c in options["cap_drop"])
    return {"image": reference, "image_digest": digest, "runtime": request.runtime, **options}


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Names of the fields whose value differs."""
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


# --- paths and gathering ------------------------------------------------------------------


@dataclass
class ContainerPaths:
    """The files of one container under a store."""

    store: str
    name: str

    @property
    def root(self) -> Path:
        return Path(self.store, "containers")

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def meta(self) -> Path:
        return self.dir / META

    @property
    def config(self) -> Path:
        return self.dir / "config.json"

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs"

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    @property
    def work(self) -> Path:
        return self.dir / "work"

    @property
    def log(self) -> Path:
        return self.dir / "log"

    @property
    def exit_dir(self) -> Path:
        return self.dir / "exit"

    @property
    def pid_file(self) -> Path:
        return self.dir / "container.pid"

    @property
    def monitor_pid_file(self) -> Path:
        return self.dir / "monitor.pid"

    @property
    def exit_file(self) -> Path:
        return self.dir / "exit" / self.name

    @property
    def runtime_root(self) -> Path:
        return self.root / ".runtime"

    @property
    def validated_dir(self) -> Path:
        return self.root / ".validated"

    @property
    def lock_file(self) -> Path:
        return self.root / ".locks" / f"{self.name}.lock"


@dataclass
class Current:
    """What is there now for one container name."""

    exists: bool
    meta: dict[str, Any]
    runtime_state: rt.RuntimeState | None
    mounted: bool
    exit_code: int | None

    @property
    def status(self) -> str:
        if not self.exists:
            return "absent"
        if self.runtime_state is not None and self.runtime_state.status in ACTIVE:
            if self.runtime_state.status == "running" and not rt.process_alive(
                self.runtime_state.pid
            ):
                return "exited"
            return self.runtime_state.status
        return "exited" if self.exit_code is not None or self.meta.get("started") else "created"


def check_name(name: str) -> None:
    if not NAME_RE.match(name or ""):
        raise ContainerError(
            f"Invalid container name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit."
        )


def unescape_mount_path(text: str) -> str:
    """Undo the octal escapes (``\\040`` for a space) of /proc/self/mountinfo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point in this mount namespace."""
    target = str(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
        return any(
            unescape_mount_path(line.split()[4]) == target for line in handle if line.strip()
        )


def read_exit_code(paths: ContainerPaths) -> int | None:
    try:
        return int(paths.exit_file.read_text().strip())
    except (OSError, ValueError):
        return None


def inspect(paths: ContainerPaths, runtime: rt.OCIRuntime | None) -> Current:
    """Gather the container's recorded metadata, runtime state, mount and exit code."""
    meta = rt.read_json(str(paths.meta))
    exists = isinstance(meta, dict)
    state = None
    if exists and runtime is not None:
        state = runtime.state(paths.name)
    return Current(
        exists=exists,
        meta=meta if exists else {},
        runtime_state=state,
        mounted=paths.rootfs.exists() and is_mounted(paths.rootfs),
        exit_code=read_exit_code(paths),
    )


@contextlib.contextmanager
def container_lock(paths: ContainerPaths) -> Iterator[None]:
    """Hold the per-name lock so two runs never act on one container at once."""
    paths.lock_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(paths.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- deciding -----------------------------------------------------------------------------


@dataclass
class Plan:
    """Actions to take, in order, with the before/after records for the diff."""

    actions: list[str]
    before: dict[str, Any]
    after: dict[str, Any]
    changed_fields: list[str]

    @property
    def changed(self) -> bool:
        return bool(self.actions)


def plan(request: ContainerRequest, current: Current, after: dict[str, Any] | None) -> Plan:
    """Actions that bring ``current`` to ``request.state``; ``after`` is the desired record."""
    before = dict(current.meta.get("desired") or {})
    status = current.status
    if request.state == "absent":
        removal = ["remove"] if current.exists or current.mounted else []
        return Plan(removal, before, {}, sorted(before) if removal else [])
    if after is None:
        raise ContainerError(f"Container {request.name}: no desired configuration to compare.")
    differs = current.exists and before != after
    if differs and before.get("image") != after.get("image") and not request.recreate:
        raise ContainerError(
            f"Container {request.name} exists and runs image {before.get('image')}, not "
            f"{after.get('image')}. Remove it, choose another name, or set recreate=true."
        )
    fields = changed_fields(before, after) if current.exists else sorted(after)
    actions: list[str] = []
    if differs or request.state == "run":
        actions += ["remove"] if current.exists or current.mounted else []
        status = "absent"
    elif current.runtime_state is not None and status == "exited":
        actions.append("cleanup")
    if status == "absent":
        actions.append("prepare")
    if request.state == "run":
        actions.append("run")
    elif request.state == "started" and status != "running":
        actions.append("start")
    elif request.state == "stopped" and status in ACTIVE:
        actions.append("stop")
    if current.exists and not differs and request.state != "run":
        fields = []
    return Plan(actions, before, after, fields)


# --- acting: the overlay rootfs -----------------------------------------------------------


def overlay_options(lowerdirs: list[str], upper: Path, work: Path) -> str:
    """The ``-o`` string for a kernel overlay mount; ``:`` and ``\\`` in paths are escaped."""
    for path in [*lowerdirs, str(upper), str(work)]:
        if "," in path:
            raise ContainerError(
                f"Path {path} contains a comma, which overlay options cannot hold."
            )
    lower = ":".join(d.replace("\\", "\\\\").replace(":", "\\:") for d in lowerdirs)
    return f"lowerdir={lower},upperdir={upper},workdir={work}"


def mount_rootfs(paths: ContainerPaths, lowerdirs: list[str]) -> None:
    """Mount the overlay of the image layers under the container's upper at rootfs/."""
    if is_mounted(paths.rootfs):
        return
    for directory in (paths.upper, paths.work, paths.rootfs):
        directory.mkdir(mode=0o755, exist_ok=True)
    options = overlay_options(lowerdirs, paths.upper, paths.work)
    if _mount_overlay(options, paths.rootfs):
        return
    # mount(8) says why the call failed, and newer util-linux also takes longer options.
    cmd = ["mount", "-t", "overlay", "overlay", "-o", options, str(paths.rootfs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ContainerError(
            f"Cannot mount the overlay rootfs of container {paths.name}: {proc.stderr.strip()}",
            cmd=cmd,
            rc=proc.returncode,
            stderr=proc.stderr,
        )


def unmount_rootfs(paths: ContainerPaths) -> None:
    """Unmount rootfs/ when it is mounted (lazily if something still holds it)."""
    if not paths.rootfs.exists() or not is_mounted(paths.rootfs):
        return
    if _unmount(paths.rootfs):
        return
    cmd = ["umount", str(paths.rootfs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 and is_mounted(paths.rootfs):
        cmd = ["umount", "-l", str(paths.rootfs)]
        lazy = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if lazy.returncode != 0:
            raise ContainerError(
                f"Cannot unmount {paths.rootfs}: {proc.stderr.strip()}", stderr=proc.stderr
            )


# mount(2) copies at most one page of options; longer ones are left to mount(8).
MOUNT_DATA_MAX = 4000


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    """The C library with mount(2) and umount2(2) typed; None where it cannot be loaded."""
    import ctypes  # noqa: PLC0415 - only mounting needs it

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


def _mount_overlay(options: str, target: Path) -> bool:
    """The overlay mount(2) that mount(8) makes, without starting it; False when it failed."""
    data = os.fsencode(options)
    libc = _libc()
    if libc is None or len(data) > MOUNT_DATA_MAX:
        return False
    return bool(libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, data) == 0)


def _unmount(target: Path) -> bool:
    """umount2(2) as umount(8) makes it, without starting it; False when it failed."""
    libc = _libc()
    return libc is not None and bool(libc.umount2(os.fsencode(target), 0) == 0)


# --- acting: files ------------------------------------------------------------------------


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def update_meta(paths: ContainerPaths, **changes: Any) -> dict[str, Any]:
    meta = rt.read_json(str(paths.meta)) or {}
    meta.update(changes)
    write_json_atomic(paths.meta, meta)
    return meta


def remove_dir(paths: ContainerPaths, keep_upper: bool) -> None:
    """Remove the container directory; with ``keep_upper`` only upper/ stays."""
    if not paths.dir.exists():
        return
    if not keep_upper:
        shutil.rmtree(paths.dir)
        return
    for child in paths.dir.iterdir():
        if child.name != "upper":
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


# --- the engine ---------------------------------------------------------------------------


class Engine:
    """Carries out a plan for one container; every side effect goes through here."""

    def __init__(
        self, request: ContainerRequest, paths: ContainerPaths, images: ImageSource,
        runtime: rt.OCIRuntime,
    ) -> None:  # fmt: skip
        self.request = request
        self.paths = paths
        self.images = images
        self.runtime = runtime
        self.result: dict[str, Any] = {}

    def apply(self, actions: list[str], after: dict[str, Any] | None) -> dict[str, Any]:
        steps = {
            "remove": self.remove,
            "cleanup": self.cleanup,
            "stop": self.stop,
            "prepare": lambda: self.prepare(after or {}),
            "start": self.start,
            "run": self.run,
        }
        for action in actions:
            steps[action]()
        return self.result

    # -- remove / cleanup / stop --------------------------------------------------------

    def remove(self) -> None:
        """Stop, delete runtime state, unmount, drop the layer claim, remove the directory."""
        state = self.runtime.state(self.paths.name)
        if state is not None and state.status in ("running", "paused"):
            self.stop()
        else:
            self.cleanup()
        self.images.release(self.paths.name)
        remove_dir(self.paths, self.request.keep_upper)

    def cleanup(self) -> None:
        """Delete the runtime state of an ended container and unmount its rootfs."""
        state = self.runtime.state(self.paths.name)
        if state is not None:
            self.runtime.delete(self.paths.name, force=True)
        unmount_rootfs(self.paths)

    def stop(self) -> None:
        """Stop signal, SIGKILL after ``stop_timeout``, then clean up."""
        name = self.paths.name
        meta = rt.read_json(str(self.paths.meta)) or {}
        signal = meta.get("stop_signal") or "SIGTERM"
        state = self.runtime.state(name)
        if state is not None and state.status == "paused":
            self.runtime._run("resume", name, check=False)
        if state is not None and state.status in ("running", "paused"):
            self.runtime.kill(name, signal, check=False)
            state = self.runtime.wait_status(name, ("stopped",), self.request.stop_timeout)
            if state is not None and state.status != "stopped":
                self.runtime.kill(name, "SIGKILL", check=False)
                self.runtime.wait_status(name, ("stopped",), STOP_KILL_WAIT)
        self.wait_for_exit_file()
        self.cleanup()
        update_meta(self.paths, finished=now())

    def wait_for_exit_file(self, timeout: float = 5.0) -> None:
        """Give the monitor a moment to record the exit code after the process ended."""
        monitor_pid = _read_pid(self.paths.monitor_pid_file)
        deadline = time.monotonic() + timeout
        while read_exit_code(self.paths) is None and time.monotonic() < deadline:
            if not rt.process_alive(monitor_pid):
                return
            time.sleep(0.02)

    # -- prepare ----------------------------------------------------------------------------

    def prepare(self, after: dict[str, Any]) -> None:
        """Directory, layer claim, overlay rootfs, config.json, metadata; undone on failure."""
        if self.paths.upper.exists():
            self.paths.upper.rename(self.paths.dir / f"upper.kept-{int(time.time())}")
        self.paths.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            image = self.images.use(self.paths.name, str(self.request.image))
            mount_rootfs(self.paths, image.lowerdirs)
            config = self.runtime_config(image)
            write_json_atomic(self.paths.config, config)
            self.paths.exit_dir.mkdir(exist_ok=True)
            meta = {
                "name": self.paths.name,
                "image": image.reference,
                "image_digest": image.digest,
                "chain_ids": image.chain_ids,
                "desired": after,
                "runtime": self.runtime.binary,
                "stop_signal": image_settings(image.config).get("StopSignal"),
                "created": now(),
            }
            write_json_atomic(self.paths.meta, meta)
        except BaseException:
            self.rollback()
            raise

    def rollback(self) -> None:
        """Undo a failed prepare: unmount, drop the claim, remove the directory."""
        with contextlib.suppress(ContainerError):
            unmount_rootfs(self.paths)
        with contextlib.suppress(Exception):
            self.images.release(self.paths.name)
        if self.paths.dir.exists() and not is_mounted(self.paths.rootfs):
            shutil.rmtree(self.paths.dir, ignore_errors=True)

    def runtime_config(self, image: ImageUse) -> dict[str, Any]:
        """config.json for this container, checked against the image and the schema."""
        store_key = hashlib.sha256(str(Path(self.paths.store).resolve()).encode()).hexdigest()
        options = dataclasses.replace(
            self.request.options,
            root_path="rootfs",
            hostname=self.request.options.hostname or self.paths.name,
            cgroups_path=f"/lapis.layers/{store_key[:12]}-{self.paths.name}",
        )
        try:
            config = rs.runtime_config_from_image(image.config, str(self.paths.rootfs), options)
            rs.validate_runtime_config(config, str(self.paths.validated_dir))
        except rs.RuntimeSpecError as exc:
            raise ContainerError(f"Container {self.paths.name}: {exc}") from exc
        program = config["process"]["args"][0]
        if rs.find_executable(str(self.paths.rootfs), config) is None:
            raise ContainerError(
                f"Container {self.paths.name}: {program!r} does not exist in image "
                f"{image.reference} (or is not executable). Check entrypoint and command."
            )
        return config

    # -- start and run ------------------------------------------------------------------------

    def _remount(self) -> None:
        """Mount the rootfs again (after a stop or a reboot); a no-op when it is mounted."""
        if is_mounted(self.paths.rootfs):
            return
        meta = rt.read_json(str(self.paths.meta)) or {}
        image = self.images.use(self.paths.name, str(meta.get("image")))
        mount_rootfs(self.paths, image.lowerdirs)

    def start(self) -> None:
        """Start detached under conmon, or under our reaper with the runtime's detached mode."""
        if self.runtime.state(self.paths.name) is not None:
            self.runtime.delete(self.paths.name, force=True)
        self._remount()
        with contextlib.suppress(FileNotFoundError):
            self.paths.exit_file.unlink()
        detached = rt.DetachedPaths(
            bundle=str(self.paths.dir),
            pid_file=str(self.paths.pid_file),
            monitor_pid_file=str(self.paths.monitor_pid_file),
            log_file=str(self.paths.log),
            exit_dir=str(self.paths.exit_dir),
        )
        conmon = find_conmon(self.request.monitor)
        try:
            if conmon:
                pid = rt.create_with_conmon(self.runtime, conmon, self.paths.name, detached)
                self.runtime.start(self.paths.name)
            else:
                pid = rt.create_with_reaper(self.runtime, self.paths.name, detached)
        except rt.OCIRuntimeError as exc:
            self.cleanup()
            raise ContainerError(
                str(exc), cmd=exc.cmd, rc=exc.rc, stdout=exc.stdout, stderr=exc.stderr
            ) from exc
        update_meta(self.paths, started=now(), finished=None, pid=pid,
                    monitor="conmon" if conmon else "reaper")  # fmt: skip

    def run(self) -> None:
        """Run to completion in the foreground; rc, stdout and stderr go into the result."""
        self._remount()
        update_meta(self.paths, started=now(), finished=None, monitor="none")
        try:
            rc, stdout, stderr = self.runtime.run(
                self.paths.name, str(self.paths.dir), self.request.run_timeout
            )
        except rt.OCIRuntimeError as exc:
            self.cleanup()
            raise ContainerError(str(exc), cmd=exc.cmd) from exc
        self.paths.exit_file.write_text(str(rc))
        self.paths.log.write_text(stdout + stderr)
        self.cleanup()
        update_meta(self.paths, finished=now())
        self.result.update(rc=rc, stdout=stdout, stderr=stderr)


def image_settings(image_config: dict[str, Any]) -> dict[str, Any]:
    """The ``config`` member of a whole image config (or the dict itself when it is that)."""
    if "config" in image_config:
        return dict(image_config.get("config") or {})
    return image_config


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def find_conmon(choice: str) -> str | None:
    """conmon's path for monitor ``auto`` (when installed) or ``conmon``; None for ``reaper``."""
    if choice == "reaper":
        return None
    found = shutil.which("conmon") or next(
        (p for p in CONMON_PATHS if Path(p).is_file() and os.access(p, os.X_OK)), None
    )
    if choice == "conmon" and not found:
        raise ContainerError(
            "monitor=conmon but conmon is not installed (Debian package conmon). "
            "Install it or use monitor=auto."
        )
    return found


# --- reporting ----------------------------------------------------------------------------


def log_tail(paths: ContainerPaths, lines: int, monitor: str | None) -> list[str]:
    """The last ``lines`` lines of the log; conmon's k8s-file prefixes are removed."""
    try:
        with open(paths.log, encoding="utf-8", errors="replace") as handle:
            text = handle.read()[-max(lines, 1) * 4096 :]
    except OSError:
        return []
    out: list[str] = []
    partial = ""
    for line in text.splitlines():
        if monitor == "conmon":
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[1] in ("stdout", "stderr") and parts[2] in ("P", "F"):
                partial += parts[3]
                if parts[2] == "F":
                    out.append(partial)
                    partial = ""
                continue
        out.append(line)
    return out[-lines:] if lines > 0 else []


def describe(paths: ContainerPaths, current: Current, log_lines: int = 0) -> dict[str, Any]:
    """The container as modules return it."""
    if not current.exists:
        return {"name": paths.name, "status": "absent"}
    meta = current.meta
    state = current.runtime_state
    running = current.status in ACTIVE
    return {
        "name": paths.name,
        "status": current.status,
        "pid": state.pid if state is not None and running else None,
        "exit_code": None if running else current.exit_code,
        "image": meta.get("image"),
        "image_digest": meta.get("image_digest"),
        "chain_ids": meta.get("chain_ids", []),
        "created": meta.get("created"),
        "started": meta.get("started"),
        "finished": None if running else meta.get("finished"),
        "monitor": meta.get("monitor"),
        "runtime": meta.get("runtime"),
        "bundle": str(paths.dir),
        "rootfs": str(paths.rootfs),
        "upperdir": str(paths.upper),
        "log_path": str(paths.log),
        "log_lines": log_tail(paths, log_lines, meta.get("monitor")),
    }


def list_names(store: str) -> list[str]:
    """Names of the containers recorded in ``store``."""
    root = Path(store, "containers")
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob(f"*/{META}") if NAME_RE.match(p.parent.name))


# --- entry point for the module ------------------------------------------------------------


def open_runtime(store: str, choice: str) -> rt.OCIRuntime:
    try:
        binary = rt.find_runtime(choice)
    except rt.OCIRuntimeError as exc:
        raise ContainerError(str(exc)) from exc
    root = Path(store, "containers", ".runtime")
    return rt.OCIRuntime(binary, str(root))


IMAGE_NOT_IN_STORE = "(not in the store)"


def lookup_image(images: ImageSource, image: str, check_mode: bool) -> tuple[str, str, list[str]]:
    """Reference and digest of ``image``, and warnings.

    In check mode an image the store lacks is planned with an unknown digest (so the
    container counts as changed) instead of failing: in a check run of a whole play an
    earlier task (``lapis.layers.image``, ``image_copy``) would have brought it.
    """
    try:
        reference, digest = images.lookup(image)
    except ContainerError:
        if not check_mode:
            raise
        note = (
            f"image {image} is not in the store; check mode plans the container as if an "
            "earlier task brought it (a real run fails unless one does)"
        )
        return image, IMAGE_NOT_IN_STORE, [note]
    return reference, digest, []


def ensure(
    request: ContainerRequest, store: str, images: ImageSource, check_mode: bool = False
) -> dict[str, Any]:
    """Bring container ``request.name`` to ``request.state``; the module's whole job."""
    check_name(request.name)
    paths = ContainerPaths(store, request.name)
    runtime = open_runtime(store, request.runtime)
    if not check_mode:
        paths.runtime_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    with container_lock(paths) if not check_mode else contextlib.nullcontext():
        current = inspect(paths, runtime)
        after = None
        warnings: list[str] = []
        if request.state != "absent":
            if not request.image:
                if not current.exists:
                    raise ContainerError(
                        f"Container {request.name} does not exist; give image to create it."
                    )
                request.image = str(current.meta.get("image"))
            reference, digest, warnings = lookup_image(images, request.image, check_mode)
            after = desired_record(request, reference, digest)
        the_plan = plan(request, current, after)
        result: dict[str, Any] = {
            "changed": the_plan.changed,
            "actions": the_plan.actions,
            "changed_fields": the_plan.changed_fields,
            "diff": {"before": the_plan.before, "after": the_plan.after},
        }
        if warnings:
            result["warnings"] = warnings
        if check_mode or not the_plan.actions:
            result["container"] = describe(paths, current)
            return result
        engine = Engine(request, paths, images, runtime)
        result.update(engine.apply(the_plan.actions, after))
        result["container"] = describe(paths, inspect(paths, runtime))
        return result


def info(store: str, name: str | None, runtime_choice: str, log_lines: int) -> list[dict[str, Any]]:
    """Describe every container of ``store`` (or just ``name``) for container_info."""
    if name is not None:
        check_name(name)
    try:
        runtime: rt.OCIRuntime | None = open_runtime(store, runtime_choice)
    except ContainerError:
        runtime = None  # without a runtime the status comes from our own files only
    names = [name] if name is not None else list_names(store)
    out = []
    for each in names:
        paths = ContainerPaths(store, each)
        try:
            current = inspect(paths, runtime)
        except rt.OCIRuntimeError as exc:
            raise ContainerError(f"Cannot read the state of container {each}: {exc}") from exc
        out.append(describe(paths, current, log_lines))
    return out
