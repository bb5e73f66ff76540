# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Unpack an image of the store to a destination: ``flat``, ``layers`` or ``bundle``.

``plan_unpack`` gathers and decides (what is at ``dest`` now, which layers are missing);
``apply_unpack`` acts. ``flat`` and ``bundle`` are built in a temporary directory beside
``dest`` and renamed over it when complete, so ``dest`` is never half-written. A small
marker file beside ``dest`` (``.<name>.lapis-image.json``) records the image reference,
manifest digest and format, which is how a second run knows there is nothing to do.
Two runs writing the same ``dest`` at once take turns on a lock file beside it
(``.<name>.lapis-lock``); the second finds the marker written and does nothing. The
store is held shared meanwhile, so garbage collection cannot remove the layers being
read.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.lapis.layers.plugins.module_utils.oci_store import (
    Store,
    StoredImage,
    remove_tree,
    write_atomic,
)

FORMATS = ("flat", "layers", "bundle")


class UnpackError(Exception):
    """The destination cannot be written or the bundle config cannot be generated."""


@dataclass
class UnpackPlan:
    """What an unpack will do: layers to unpack into the store, and whether ``dest`` changes."""

    image: StoredImage
    fmt: str
    dest: Path | None
    missing_layers: list[str] = field(default_factory=list)
    dest_changes: bool = False
    before: dict[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """Whether acting would change anything."""
        return bool(self.missing_layers) or self.dest_changes

    @property
    def after(self) -> dict[str, Any]:
        """The marker state after the unpack (what the diff shows)."""
        if self.dest is None:
            return {}
        return marker_doc(self.image, self.fmt)


def marker_path(dest: Path) -> Path:
    """``<parent>/.<name>.lapis-image.json``: records what was unpacked at ``dest``."""
    return dest.parent / f".{dest.name}.lapis-image.json"


def marker_doc(image: StoredImage, fmt: str) -> dict[str, Any]:
    """The marker's content for ``image`` unpacked in ``fmt``."""
    return {"image": image.reference, "manifest_digest": image.manifest_digest, "format": fmt}


def read_marker(dest: Path) -> dict[str, Any]:
    """The marker beside ``dest`` ({} when there is none or it is unreadable)."""
    try:
        doc = json.loads(marker_path(dest).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def plan_unpack(
    store: Store, reference: str, fmt: str, dest: str | None, force: bool = False
) -> UnpackPlan:
    """Gather the current state and decide what an unpack must do."""
    if fmt not in FORMATS:
        raise UnpackError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    image = store.resolve(reference)
    missing = [layer.chain_id for layer in image.layers if not store.has_layer(layer.chain_id)]
    if fmt == "layers":
        if dest is not None:
            raise UnpackError("dest is not used with format=layers (the layers stay in the store)")
        return UnpackPlan(image, fmt, None, missing)
    if dest is None:
        raise UnpackError(f"format={fmt} needs dest")
    path = Path(dest)
    if not path.is_absolute():
        raise UnpackError(f"dest {dest} must be an absolute path")
    plan = UnpackPlan(image, fmt, path, missing)
    plan.before = read_marker(path) if path.exists() else {}
    if plan.before == marker_doc(image, fmt) and path.is_dir():
        return plan
    if path.exists() and not path.is_dir():
        raise UnpackError(f"dest {dest} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not plan.before and not force:
        raise UnpackError(
            f"dest {dest} is not empty and was not written by an earlier unpack; "
            "set force=true to replace its content"
        )
    plan.dest_changes = True
    return plan


def lock_path(dest: Path) -> Path:
    """``<parent>/.<name>.lapis-lock``: taken by every run that writes ``dest``."""
    return dest.parent / f".{dest.name}.lapis-lock"


@contextlib.contextmanager
def dest_lock(dest: Path) -> Iterator[None]:
    """Hold the lock beside ``dest`` (flock, exclusive) while writing it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(dest), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def apply_unpack(store: Store, plan: UnpackPlan) -> list[str]:
    """Act on ``plan``; return the image's lowerdirs (topmost first).

    When another run wrote the same image to ``dest`` meanwhile, ``plan.dest_changes``
    becomes False and ``dest`` is left as it is.
    """
    with store.lock(shared=True):
        lowerdirs = store.ensure_layers(plan.image)
        if plan.dest is None or not plan.dest_changes:
            return lowerdirs
        with dest_lock(plan.dest):
            if read_marker(plan.dest) == marker_doc(plan.image, plan.fmt) and plan.dest.is_dir():
                plan.dest_changes = False
                return lowerdirs
            _write_dest(plan, lowerdirs)
    return lowerdirs


def _write_dest(plan: UnpackPlan, lowerdirs: list[str]) -> None:
    """Build ``flat`` or ``bundle`` beside ``dest`` and rename it into place.

    Called under the lock beside ``dest``, so temporary trees found there are stale.
    """
    dest = plan.dest
    if dest is None:
        return
    prefix = f".{dest.name}.lapis-tmp-"
    for stale in dest.parent.iterdir():  # left by a run that was killed
        if stale.name.startswith(prefix) and stale.is_dir() and not stale.is_symlink():
            remove_tree(stale)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=dest.parent))
    try:
        if plan.fmt == "flat":
            _flatten(lowerdirs, work / "rootfs")
            _replace(work / "rootfs", dest, work)
        else:
            _flatten(lowerdirs, work / "bundle" / "rootfs")
            _write_bundle_config(plan.image, work / "bundle")
            _replace(work / "bundle", dest, work)
        write_atomic(marker_path(dest), json.dumps(marker_doc(plan.image, plan.fmt)).encode())
    finally:
        remove_tree(work)


def _flatten(lowerdirs: list[str], rootfs: Path) -> None:
    from ansible_collections.lapis.layers.plugins.module_utils.layer_tar import (  # noqa: PLC0415
        LayerError,
        flatten_layers,
    )

    rootfs.parent.mkdir(mode=0o700, exist_ok=True)
    try:
        flatten_layers(list(reversed(lowerdirs)), str(rootfs))
    except LayerError as exc:
        raise UnpackError(f"flattening layers into {rootfs}: {exc}") from exc


def _replace(new: Path, dest: Path, work: Path) -> None:
    """Put ``new`` at ``dest``; an old ``dest`` is moved into ``work`` (removed with it)."""
    if dest.exists():
        if dest.is_dir() and not dest.is_symlink():
            dest.rename(work / "old")
        else:
            raise UnpackError(f"dest {dest} is not a directory")
    try:
        new.rename(dest)
    except OSError:
        if (work / "old").exists():
            (work / "old").rename(dest)
        raise


def runtime_config(image: StoredImage, rootfs: Path) -> dict[str, Any]:
    """The bundle's ``config.json``: from the image config, checked against the schema."""
    from ansible_collections.lapis.layers.plugins.module_utils.runtime_spec import (  # noqa: PLC0415
        ContainerOptions,
        RuntimeSpecError,
        runtime_config_from_image,
        validate_runtime_config,
    )

    try:
        config = runtime_config_from_image(
            image.config, str(rootfs), ContainerOptions(root_path="rootfs")
        )
        validate_runtime_config(config)
    except RuntimeSpecError as exc:
        raise UnpackError(f"image {image.reference}: {exc}") from exc
    return config


def _write_bundle_config(image: StoredImage, bundle: Path) -> None:
    config = runtime_config(image, bundle / "rootfs")
    write_atomic(bundle / "config.json", json.dumps(config, indent=2).encode() + b"\n", 0o600)


def remove_unpacked(dest: Path) -> bool:
    """Remove ``dest`` and its marker (used by tests and cleanup); True when something went."""
    found = False
    if dest.is_dir():
        remove_tree(dest)
        found = True
    marker = marker_path(dest)
    if marker.exists():
        marker.unlink()
        found = True
    return found
