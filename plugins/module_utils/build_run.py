# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""RUN steps: one foreground container in the OCI runtime over the step root.

The runtime config comes from ``runtime_spec.runtime_config_from_image`` (the same
code the ``container`` module uses) with the step's argv, environment, user and
working directory; it runs with ``runc run`` under the store's own runtime root
(``<store>/build/runtime``), and its output is captured.

Network: ``--network=none`` gets a private network namespace with loopback only;
``default`` and ``host`` share the host's network (there is no bridge here), with
the host's ``/etc/resolv.conf`` and ``/etc/hosts`` mounted read-only.

Mounts: ``type=cache`` is a directory under ``<store>/build/cache-mounts/`` kept
between builds (keyed by ``id``, default the target); ``type=bind`` mounts a path of
the build context, or of another stage or image, read-only unless ``rw`` (a writable
bind gets a throw-away copy, so the context is never changed); ``type=tmpfs`` is a
tmpfs. ``secret`` and ``ssh`` mounts are refused.

Mount points the runtime had to create in the root (``/proc``, ``/dev``, ``/sys``, a
mount target) are removed from the upper directory afterwards when they are still
empty, so they do not end up in the layer.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.lapis.layers.plugins.module_utils import oci_runtime as rt
from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_instructions import (
    Mount,
)

_OUTPUT_LIMIT = 64 * 1024


class RunError(Exception):
    """A RUN step could not run or exited non-zero; ``output`` holds what it printed."""

    def __init__(self, message: str, rc: int = 1, output: str = "") -> None:
        super().__init__(message)
        self.rc = rc
        self.output = output


@dataclass
class RunRequest:
    """What the executor knows about one RUN step."""

    argv: list[str]
    env: list[str]
    user: str
    workdir: str
    network: str
    mounts: list[Mount] = field(default_factory=list)
    inline_files: dict[str, str] = field(default_factory=dict)


@dataclass
class RunResult:
    rc: int
    output: str


MountSource = Callable[[Mount], Path]


def _cache_dir(store_root: Path, mount: Mount) -> Path:
    key = hashlib.sha256((mount.id or mount.target).encode("utf-8")).hexdigest()
    path = store_root / "build" / "cache-mounts" / key
    if not path.is_dir():
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
        if mount.mode is not None:
            path.chmod(mount.mode)
        os.chown(path, mount.uid or 0, mount.gid or 0)
    return path


def _spec_mounts(
    request: RunRequest, store_root: Path, work: Path, bind_source: MountSource
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for mount in request.mounts:
        target = mount.target if mount.target.startswith("/") else "/" + mount.target
        if mount.type == "tmpfs":
            out.append(
                {
                    "destination": target,
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["nosuid", "nodev", "mode=1777"],
                }
            )
            continue
        if mount.type == "cache":
            source = _cache_dir(store_root, mount)
            readonly = mount.readonly
        elif mount.type == "bind":
            source = bind_source(mount)
            readonly = mount.readonly
            if not readonly:
                copy = work / f"bind-{len(out)}"
                if source.is_dir():
                    shutil.copytree(source, copy, symlinks=True)
                else:
                    shutil.copy2(source, copy)
                source = copy
        else:
            raise RunError(
                f"RUN --mount=type={mount.type} is not supported by this builder; expected "
                "bind, cache or tmpfs"
            )
        options = ["rbind", "ro" if readonly else "rw", "nosuid", "nodev"]
        out.append(
            {"destination": target, "type": "bind", "source": str(source), "options": options}
        )
    for index, (path, body) in enumerate(sorted(request.inline_files.items())):
        script = work / f"inline-{index}"
        script.write_text(body)
        script.chmod(0o755)
        out.append(
            {
                "destination": path,
                "type": "bind",
                "source": str(script),
                "options": ["rbind", "ro", "nosuid", "nodev"],
            }
        )
    return out


def runtime_config(
    request: RunRequest, rootfs: Path, extra_mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    """The runtime config.json of a RUN step (rootfs path absolute)."""
    from ansible_collections.lapis.layers.plugins.module_utils import runtime_spec as rs  # noqa: PLC0415

    env: dict[str, str] = {}
    for item in request.env:
        key, _sep, value = item.partition("=")
        env[key] = value
    network = "none" if request.network == "none" else "host"
    options = rs.ContainerOptions(
        entrypoint=list(request.argv),
        command=[],
        env=env,
        workdir=request.workdir or "/",
        user=request.user or "0",
        network=network,
        no_new_privileges=False,
        hostname=None,
    )
    try:
        config = rs.runtime_config_from_image({}, str(rootfs), options)
    except rs.RuntimeSpecError as exc:
        raise RunError(f"RUN {' '.join(request.argv)}: {exc}") from exc
    config["mounts"] = list(config["mounts"]) + extra_mounts
    if network == "host":
        config["linux"]["namespaces"] = [
            ns for ns in config["linux"]["namespaces"] if ns["type"] != "network"
        ]
    return config


def _existing(rootfs: Path, paths: list[str]) -> set[str]:
    from ansible_collections.lapis.layers.plugins.module_utils import runtime_spec as rs  # noqa: PLC0415

    return {p for p in paths if os.path.lexists(rs.resolve_in_root(str(rootfs), p))}


def _drop_created_mountpoints(upper: Path, created: list[str]) -> None:
    """Remove mount points the runtime created, deepest first, when still empty."""
    for path in sorted(created, key=lambda p: -p.count("/")):
        parts = [p for p in path.split("/") if p]
        while parts:
            host = upper.joinpath(*parts)
            try:
                if host.is_dir() and not host.is_symlink():
                    host.rmdir()
                elif host.is_file() and host.stat().st_size == 0:
                    host.unlink()
                else:
                    break
            except OSError:
                break
            parts.pop()
            if parts and "/" + "/".join(parts) not in created:
                break


def run_step(
    runtime: rt.OCIRuntime,
    request: RunRequest,
    *,
    rootfs: Path,
    upper: Path,
    work: Path,
    store_root: Path,
    bind_source: MountSource,
) -> RunResult:
    """Run one RUN step in ``rootfs`` (the mounted step root); raise RunError on failure."""
    from ansible_collections.lapis.layers.plugins.module_utils import runtime_spec as rs  # noqa: PLC0415

    bundle = work / "bundle"
    bundle.mkdir(mode=0o700, parents=True, exist_ok=True)
    mounts = _spec_mounts(request, store_root, work, bind_source)
    config = runtime_config(request, rootfs, mounts)
    workdir_path = rs.resolve_in_root(str(rootfs), config["process"]["cwd"])
    Path(workdir_path).mkdir(mode=0o755, parents=True, exist_ok=True)
    points = [str(m["destination"]) for m in config["mounts"]]
    before = _existing(rootfs, points)
    (bundle / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    container_id = "lapis-build-" + secrets.token_hex(6)
    try:
        rc, stdout, stderr = runtime.run(container_id, str(bundle))
    finally:
        runtime.delete(container_id, force=True)
    created = [p for p in points if p not in before]
    _drop_created_mountpoints(upper, created)
    output = (stdout + stderr)[-_OUTPUT_LIMIT:]
    if rc != 0:
        raise RunError(
            f"the command exited with code {rc}: {output.strip()[-2000:]}",
            rc,
            output,
        )
    return RunResult(rc=rc, output=output)
