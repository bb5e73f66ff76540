# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""OCI runtime-spec ``config.json`` from an OCI image config plus container options.

The image config (``Env``, ``Cmd``, ``Entrypoint``, ``WorkingDir``, ``User``, ``StopSignal``,
``Labels``) is merged with :class:`ContainerOptions` the way ``docker run`` and ``podman run``
merge them, and the result is a plain dict ready to be written as a bundle's ``config.json``.
Users and groups are resolved against the image's own ``/etc/passwd`` and ``/etc/group``, read
through :func:`resolve_in_root` so that a symlink in the image can never make us read a host file.

Nothing here runs a runtime; :mod:`oci_runtime` does that.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import posixpath
import re
import resource
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# jsonschema (with referencing) takes a good part of the module's start-up time, so it is
# imported only when a config is actually validated (see :func:`validate_runtime_config`).
JSONSCHEMA_IMPORT_ERROR: ImportError | None = (
    None
    if importlib.util.find_spec("jsonschema") is not None
    else ImportError("No module named 'jsonschema'")
)

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STOP_SIGNAL_ANNOTATION = "org.opencontainers.image.stopSignal"

# The capability set that Docker and Podman give a container unless told otherwise.
DEFAULT_CAPABILITIES = (
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
)

# Every capability of Linux up to 6.x, in kernel order (capability.h).
ALL_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)

RLIMIT_NAMES = (
    "AS",
    "CORE",
    "CPU",
    "DATA",
    "FSIZE",
    "LOCKS",
    "MEMLOCK",
    "MSGQUEUE",
    "NICE",
    "NOFILE",
    "NPROC",
    "RSS",
    "RTPRIO",
    "RTTIME",
    "SIGPENDING",
    "STACK",
)

# Soft and hard limits a container gets unless told otherwise (the ``runc spec`` default),
# lowered to the host's hard limits when those are smaller.
DEFAULT_RLIMITS = {"NOFILE": (1024, 1024)}

MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/firmware",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

NETWORK_MODES = ("none", "host")
MAX_SYMLINKS = 40


class RuntimeSpecError(Exception):
    """The options cannot be turned into a runtime config; the message says why and how to fix."""


@dataclass
class BindMount:
    """A host path bind-mounted into the container."""

    source: str
    destination: str
    read_only: bool = False


@dataclass
class ContainerOptions:
    """What a user may set on top of the image config. ``None`` means "use the image's"."""

    command: list[str] | None = None
    entrypoint: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    mounts: list[BindMount] = field(default_factory=list)
    read_only: bool = False
    network: str = "none"
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    no_new_privileges: bool = True
    rlimits: dict[str, tuple[int, int]] = field(default_factory=dict)
    cgroups_path: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    root_path: str | None = None


@dataclass
class ResolvedUser:
    """A user resolved against the image: ids, supplementary groups and home directory."""

    uid: int
    gid: int
    additional_gids: list[int] = field(default_factory=list)
    home: str = "/"


# --- reading files inside the image root -----------------------------------------------------


def resolve_in_root(root: str, path: str) -> str:
    """Host path of ``path`` inside ``root``, following symlinks as if ``root`` were ``/``.

    Absolute symlink targets restart at ``root`` and ``..`` stops at ``root``, so the result
    always lies inside ``root`` (it may not exist).
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = Path(root, *done, part)
        if not candidate.is_symlink():
            done.append(part)
            continue
        hops += 1
        if hops > MAX_SYMLINKS:
            raise RuntimeSpecError(f"Too many levels of symbolic links under {path} in {root}.")
        target = str(candidate.readlink())
        if target.startswith("/"):
            done = []
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    return str(Path(root, *done))


def read_in_root(root: str, path: str) -> str | None:
    """Text of the regular file ``path`` inside ``root``, or ``None`` when there is none."""
    host_path = resolve_in_root(root, path)
    try:
        if not stat.S_ISREG(Path(host_path).stat().st_mode):
            return None
        with open(host_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def parse_colon_file(text: str | None) -> list[list[str]]:
    """Rows of an /etc/passwd or /etc/group style file (comments and blank lines skipped)."""
    rows = []
    for line in (text or "").splitlines():
        if line.strip() and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


# --- users ---------------------------------------------------------------------------------


def _group_id(group: str, groups: list[list[str]], user: str) -> int:
    if group.isdigit():
        return int(group)
    for row in groups:
        if len(row) >= 3 and row[0] == group and row[2].isdigit():
            return int(row[2])
    raise RuntimeSpecError(
        f"Invalid user {user!r}: group {group!r} is not in the image's /etc/group. "
        "Use a numeric gid or a group that the image defines."
    )


def resolve_user(rootfs: str, user: str | None) -> ResolvedUser:
    """Resolve ``name``, ``uid``, ``name:group`` or ``uid:gid`` against the image's files.

    A numeric uid that the image does not list is accepted with gid 0, as Docker does; a user
    or group *name* that the image does not define is an error.
    """
    spec = (user or "").strip() or "0"
    name, _sep, group = spec.partition(":")
    passwd = parse_colon_file(read_in_root(rootfs, "/etc/passwd"))
    groups = parse_colon_file(read_in_root(rootfs, "/etc/group"))

    entry = None
    for row in passwd:
        if len(row) >= 4 and (row[0] == name or (name.isdigit() and row[2] == name)):
            entry = row
            break
    if entry is None and not name.isdigit():
        raise RuntimeSpecError(
            f"Invalid user {spec!r}: {name!r} is not in the image's /etc/passwd. "
            "Use a numeric uid[:gid] or a user that the image defines."
        )
    if entry is not None and not (entry[2].isdigit() and entry[3].isdigit()):
        raise RuntimeSpecError(f"Invalid user {spec!r}: its /etc/passwd entry is malformed.")

    uid = int(entry[2]) if entry else int(name)
    gid = _group_id(group, groups, spec) if group else (int(entry[3]) if entry else 0)
    home = entry[5] if entry and len(entry) >= 6 and entry[5] else "/"
    extra: list[int] = []
    if entry is not None and not group:
        for row in groups:
            members = row[3].split(",") if len(row) >= 4 else []
            if entry[0] in members and row[2].isdigit() and int(row[2]) != gid:
                extra.append(int(row[2]))
    return ResolvedUser(uid=uid, gid=gid, additional_gids=sorted(set(extra)), home=home)


# --- small parsers for option values --------------------------------------------------------


def split_command(value: Any, what: str) -> list[str] | None:
    """A command given as a list or a shell-quoted string, as an argv list (None = unset)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise RuntimeSpecError(f"Cannot split {what} {value!r}: {exc}.") from exc
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value]
    raise RuntimeSpecError(f"{what} must be a list of strings or a string, not {value!r}.")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(value: Any) -> int:
    """Bytes from ``67108864``, ``"64m"``, ``"64MiB"`` or ``"1g"`` (binary multiples)."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise RuntimeSpecError(f"Invalid size {value!r}: use bytes or a number with k, m, g or t.")
    factor = 1024 ** " kmgt".index(match.group(2).lower() or " ")
    return int(float(match.group(1)) * factor)


def normalize_capability(name: str) -> str:
    """``net_admin`` -> ``CAP_NET_ADMIN``; ``ALL`` stays ``ALL``; unknown names are an error."""
    upper = name.strip().upper()
    if upper == "ALL":
        return upper
    cap = upper if upper.startswith("CAP_") else "CAP_" + upper
    if cap not in ALL_CAPABILITIES:
        raise RuntimeSpecError(f"Unknown capability {name!r}. Use a name like NET_ADMIN or ALL.")
    return cap


def capability_set(cap_add: list[str], cap_drop: list[str]) -> list[str]:
    """The default set, minus ``cap_drop``, plus ``cap_add`` (``ALL`` works on either side)."""
    add = [normalize_capability(c) for c in cap_add]
    drop = [normalize_capability(c) for c in cap_drop]
    caps = set() if "ALL" in drop else set(DEFAULT_CAPABILITIES) - set(drop)
    caps |= set(ALL_CAPABILITIES) if "ALL" in add else set(add) - {"ALL"}
    return [c for c in ALL_CAPABILITIES if c in caps]


def normalize_rlimit_name(name: str) -> str:
    """``nofile`` or ``RLIMIT_NOFILE`` -> ``NOFILE``."""
    upper = name.strip().upper()
    short = upper[len("RLIMIT_") :] if upper.startswith("RLIMIT_") else upper
    if short not in RLIMIT_NAMES:
        raise RuntimeSpecError(f"Unknown rlimit {name!r}. Known: {', '.join(RLIMIT_NAMES)}.")
    return short


def parse_rlimit(name: str, value: Any) -> tuple[int, int]:
    """``1024``, ``"1024"`` or ``"1024:4096"`` (soft:hard) as a (soft, hard) pair."""
    text = str(value).strip()
    soft_text, _sep, hard_text = text.partition(":")
    hard_text = hard_text or soft_text
    try:
        soft, hard = int(soft_text), int(hard_text)
    except ValueError:
        raise RuntimeSpecError(
            f"Invalid rlimit {name}={value!r}: use SOFT or SOFT:HARD as integers."
        ) from None
    if soft < 0 or hard < 0 or soft > hard:
        raise RuntimeSpecError(f"Invalid rlimit {name}={value!r}: need 0 <= soft <= hard.")
    return soft, hard


def host_hard_limit(name: str) -> int | None:
    """The hard limit of this process for ``name``; None when unlimited or unknown."""
    number = getattr(resource, "RLIMIT_" + name, None)
    if number is None:
        return None
    hard = resource.getrlimit(number)[1]
    return None if hard == resource.RLIM_INFINITY else hard


def build_rlimits(requested: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    """Rlimits for the process: the defaults lowered to the host's hard limits, plus requests.

    runc refuses to start a container whose rlimit exceeds the hard limit of the host process
    that starts it, so a requested limit above it is an error rather than a failed start.
    """
    limits: dict[str, tuple[int, int]] = {}
    for name, (soft, hard) in DEFAULT_RLIMITS.items():
        host = host_hard_limit(name)
        limits[name] = (soft, hard) if host is None else (min(soft, host), min(hard, host))
    for raw_name, (soft, hard) in requested.items():
        name = normalize_rlimit_name(raw_name)
        host = host_hard_limit(name)
        if host is not None and hard > host:
            raise RuntimeSpecError(
                f"rlimit {name} hard limit {hard} is above this host's hard limit {host}; "
                f"the runtime would refuse to start. Use at most {host}."
            )
        limits[name] = (soft, hard)
    return [
        {"type": "RLIMIT_" + name, "soft": soft, "hard": hard}
        for name, (soft, hard) in sorted(limits.items())
    ]


# --- the config sections --------------------------------------------------------------------


def merge_env(image_env: list[str] | None, env: dict[str, str], home: str) -> list[str]:
    """Image ``Env`` overridden by ``env``; PATH and HOME filled in when nobody set them."""
    merged: dict[str, str] = {}
    for item in image_env or []:
        key, _sep, value = item.partition("=")
        merged[key] = value
    for key, value in env.items():
        if not key or "=" in key:
            raise RuntimeSpecError(f"Invalid environment variable name {key!r}.")
        merged[key] = str(value)
    merged.setdefault("PATH", DEFAULT_PATH)
    merged.setdefault("HOME", home)
    return [f"{key}={value}" for key, value in merged.items()]


def process_args(image_config: dict[str, Any], options: ContainerOptions) -> list[str]:
    """Entrypoint + command, as ``docker run`` combines them.

    A given ``entrypoint`` replaces the image's Entrypoint *and* drops the image's Cmd; a given
    ``command`` replaces the image's Cmd. With neither anywhere, ``sh`` (the ``runc spec``
    default) is used.
    """
    if options.entrypoint is not None:
        entrypoint = list(options.entrypoint)
        command = list(options.command or [])
    else:
        entrypoint = list(image_config.get("Entrypoint") or [])
        image_cmd = image_config.get("Cmd") or []
        command = list(options.command if options.command is not None else image_cmd)
    return entrypoint + command or ["sh"]


def default_mounts(network: str) -> list[dict[str, Any]]:
    """The kernel filesystems every container gets, as ``runc spec`` lays them out."""
    sysfs_options = ["nosuid", "noexec", "nodev", "ro"]
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sysfs_options},
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        },
    ]
    if network == "host":
        for path in ("/etc/resolv.conf", "/etc/hosts"):
            if Path(path).is_file():
                mounts.append(
                    {
                        "destination": path,
                        "type": "bind",
                        "source": path,
                        "options": ["rbind", "ro", "nosuid", "nodev"],
                    }
                )
    return mounts


def bind_mounts(mounts: list[BindMount]) -> list[dict[str, Any]]:
    """User bind mounts; destinations must be absolute and may not repeat."""
    out = []
    seen: set[str] = set()
    for mount in mounts:
        destination = posixpath.normpath(mount.destination)
        if not destination.startswith("/"):
            raise RuntimeSpecError(f"Mount destination {mount.destination!r} is not absolute.")
        if destination in seen:
            raise RuntimeSpecError(f"Mount destination {destination!r} is given twice.")
        seen.add(destination)
        if not mount.source.startswith("/"):
            raise RuntimeSpecError(f"Mount source {mount.source!r} is not an absolute host path.")
        mode = "ro" if mount.read_only else "rw"
        out.append(
            {
                "destination": destination,
                "type": "bind",
                "source": mount.source,
                "options": ["rbind", mode, "nosuid", "nodev"],
            }
        )
    return out


def linux_section(options: ContainerOptions) -> dict[str, Any]:
    """Namespaces, resources, masked and read-only paths."""
    if options.network not in NETWORK_MODES:
        raise RuntimeSpecError(
            f"Unknown network {options.network!r}; use one of {', '.join(NETWORK_MODES)}."
        )
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "cgroup")]
    if options.network == "none":
        namespaces.append({"type": "network"})

    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if options.memory is not None:
        if options.memory < 6 * 1024 * 1024:
            raise RuntimeSpecError(f"memory {options.memory} is below the 6 MiB minimum.")
        resources["memory"] = {"limit": options.memory}
    if options.cpus is not None:
        if options.cpus <= 0:
            raise RuntimeSpecError(f"cpus must be positive, not {options.cpus}.")
        resources["cpu"] = {"quota": int(options.cpus * 100000), "period": 100000}
    if options.pids_limit is not None:
        resources["pids"] = {"limit": options.pids_limit}

    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "resources": resources,
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if options.cgroups_path:
        linux["cgroupsPath"] = options.cgroups_path
    return linux


def annotations_for(image_config: dict[str, Any], options: ContainerOptions) -> dict[str, str]:
    """Image labels and StopSignal as annotations (image-spec conversion rules), plus ours."""
    annotations = {str(k): str(v) for k, v in (image_config.get("Labels") or {}).items()}
    if image_config.get("StopSignal"):
        annotations[STOP_SIGNAL_ANNOTATION] = str(image_config["StopSignal"])
    annotations.update(options.annotations)
    return annotations


# --- the public entry point -----------------------------------------------------------------


def runtime_config_from_image(
    image_config: dict[str, Any], rootfs: str, options: ContainerOptions | None = None
) -> dict[str, Any]:
    """The OCI runtime ``config.json`` (a dict) for running ``image_config`` on ``rootfs``.

    ``image_config`` is either a whole OCI image config (with a ``config`` member) or just its
    ``config`` member. ``rootfs`` is the root filesystem directory, used to resolve the user
    against its /etc/passwd and /etc/group; it becomes ``root.path`` unless
    ``options.root_path`` is set (for example to ``"rootfs"``, relative to the bundle).
    With ``options`` omitted the container gets the image's command, environment, working
    directory and user, its own network namespace with loopback only, the default capability
    set, ``noNewPrivileges`` and an RLIMIT_NOFILE of 1024 (lowered to the host's hard limit).
    Raises :class:`RuntimeSpecError` with a message naming the offending value.
    """
    options = options or ContainerOptions()
    config = image_config.get("config") if "config" in image_config else image_config
    config = config or {}

    user = resolve_user(rootfs, options.user if options.user is not None else config.get("User"))
    cwd = options.workdir or config.get("WorkingDir") or "/"
    if not cwd.startswith("/"):
        raise RuntimeSpecError(f"Working directory {cwd!r} is not an absolute path.")
    caps = capability_set(options.cap_add, options.cap_drop)

    process: dict[str, Any] = {
        "terminal": False,
        "user": {"uid": user.uid, "gid": user.gid},
        "args": process_args(config, options),
        "env": merge_env(config.get("Env"), options.env, user.home),
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": build_rlimits(options.rlimits),
        "noNewPrivileges": options.no_new_privileges,
    }
    if user.additional_gids:
        process["user"]["additionalGids"] = user.additional_gids

    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": options.root_path or rootfs, "readonly": options.read_only},
        "mounts": default_mounts(options.network) + bind_mounts(options.mounts),
        "linux": linux_section(options),
    }
    if options.hostname:
        spec["hostname"] = options.hostname
    annotations = annotations_for(config, options)
    if annotations:
        spec["annotations"] = annotations
    return spec


def find_executable(rootfs: str, config: dict[str, Any]) -> str | None:
    """Host path of the program ``config`` would run inside ``rootfs``, or None if missing.

    Mirrors the runtime's lookup: a name with a slash is taken relative to the working
    directory, a bare name is searched in the process's PATH.
    """
    process = config.get("process") or {}
    program = (process.get("args") or [""])[0]
    if not program:
        return None
    if "/" in program:
        candidates = [posixpath.join(process.get("cwd") or "/", program)]
    else:
        path = DEFAULT_PATH
        for item in process.get("env") or []:
            if item.startswith("PATH="):
                path = item[len("PATH=") :]
        candidates = [posixpath.join(d or ".", program) for d in path.split(":") if d]
    for candidate in candidates:
        host_path = resolve_in_root(rootfs, candidate)
        if Path(host_path).is_file() and os.access(host_path, os.X_OK):
            return host_path
    return None


# --- validation -----------------------------------------------------------------------------

_BASE = "https://schemas.invalid/oci-runtime-spec/"


VALIDATED_KEEP = 256


@functools.lru_cache(maxsize=1)
def _schemas() -> dict[str, Any]:
    from ansible_collections.lapis.layers.plugins.module_utils.runtime_spec_schema import (  # noqa: PLC0415
        SCHEMAS,
    )

    return SCHEMAS


@functools.lru_cache(maxsize=4)
def _validator(entry: str) -> Any:
    if JSONSCHEMA_IMPORT_ERROR is not None:
        raise RuntimeSpecError(
            f"jsonschema is needed to validate a runtime config: {JSONSCHEMA_IMPORT_ERROR}"
        )
    import jsonschema  # noqa: PLC0415 - slow to import, see JSONSCHEMA_IMPORT_ERROR

    schemas = _schemas()
    try:
        import referencing  # noqa: PLC0415
        import referencing.jsonschema  # noqa: PLC0415
    except ImportError:  # pragma: no cover - jsonschema before 4.18 has no referencing
        store = {_BASE + name: doc for name, doc in schemas.items()}
        resolver = jsonschema.RefResolver(
            base_uri=_BASE + entry, referrer=schemas[entry], store=store
        )
        return jsonschema.Draft4Validator(schemas[entry], resolver=resolver)
    draft4 = referencing.jsonschema.DRAFT4
    resources = [
        (_BASE + name, referencing.Resource.from_contents(doc, default_specification=draft4))
        for name, doc in schemas.items()
    ]
    registry = referencing.Registry().with_resources(resources).crawl()
    return jsonschema.Draft4Validator({"$ref": _BASE + entry}, registry=registry)


def schema_errors(document: Any, entry: str = "config-schema.json") -> list[str]:
    """Every schema violation of ``document`` as ``path: message`` lines (empty when valid)."""
    validator = _validator(entry)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    return [
        "/".join(str(p) for p in error.absolute_path) + ": " + error.message for error in errors
    ]


def config_fingerprint(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``config`` together with the embedded schemas."""
    digest = hashlib.sha256(_schemas_fingerprint().encode())
    digest.update(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _schemas_fingerprint() -> str:
    text = json.dumps(_schemas(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def validate_runtime_config(config: dict[str, Any], cache_dir: str | None = None) -> None:
    """Raise :class:`RuntimeSpecError` listing the violations when ``config`` is not valid.

    With ``cache_dir``, a config found valid leaves an empty file named after
    :func:`config_fingerprint` there; the same config (against the same schemas) is then
    accepted without running, or even importing, jsonschema again. Only the newest
    ``VALIDATED_KEEP`` marks are kept.
    """
    mark = Path(cache_dir, config_fingerprint(config)) if cache_dir else None
    if mark is not None and mark.is_file():
        return
    errors = schema_errors(config)
    if errors:
        raise RuntimeSpecError(
            "Generated runtime config.json does not match the OCI runtime-spec schema: "
            + "; ".join(errors[:5])
        )
    if mark is not None:
        _remember_valid(mark)


def _remember_valid(mark: Path) -> None:
    """Leave the mark of a validated config; a cache that cannot be written is no error."""
    try:
        mark.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        mark.touch()
        others = [p for p in mark.parent.iterdir() if len(p.name) == 64 and p.name != mark.name]
        if len(others) >= VALIDATED_KEEP:
            others.sort(key=lambda p: p.stat().st_mtime)
            for old in others[: len(others) - VALIDATED_KEEP + 1]:
                old.unlink()
    except OSError:
        pass
