# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Image references as a registry sees them, and platform strings.

``parse_reference`` normalises a user's image name with ``oci_refs.parse_image_ref``
(the way the Docker and Podman tools do: a bare ``alpine`` is
``docker.io/library/alpine:latest``, a name whose first component looks like a host
names its own registry, ``NAME@sha256:...`` pins a manifest digest), so the store and
the registry client agree on every name. ``RegistryRef`` adds what the distribution
API needs: ``api_host`` is where that registry's API answers (Docker Hub's is
``registry-1.docker.io``), ``reference`` what goes after ``/manifests/``.
"""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass
from typing import Any

from ansible_collections.lapis.layers.plugins.module_utils.oci_refs import (
    DEFAULT_TAG,
    DOCKER_HUB,
    ImageRef,
    InvalidReference,
    parse_image_ref,
)

DOCKER_HUB_API = "registry-1.docker.io"


@dataclass(frozen=True)
class RegistryRef(ImageRef):
    """A normalised image reference (`ImageRef`) with the names the distribution API uses."""

    @property
    def registry(self) -> str:
        """The registry host (and port) as written in the reference (``docker.io``)."""
        return self.domain

    @property
    def repository(self) -> str:
        """The repository path on that registry (``library/alpine``)."""
        return self.path

    @property
    def api_host(self) -> str:
        """Host (and port) where the registry's ``/v2/`` API answers."""
        return DOCKER_HUB_API if self.domain == DOCKER_HUB else self.domain

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> RegistryRef:
        """The same repository pinned to ``digest`` (the tag is kept for display)."""
        return RegistryRef(self.domain, self.path, self.tag, digest)


def parse_reference(text: str, default_tag: str = DEFAULT_TAG) -> RegistryRef:
    """Parse and normalise an image reference (with ``oci_refs.parse_image_ref``, the one
    parser of the collection); raises `InvalidReference` with the cause."""
    if "://" in text:
        raise InvalidReference(f"{text!r}: give an image reference, not a URL")
    ref = parse_image_ref(text, default_tag)
    return RegistryRef(ref.domain, ref.path, ref.tag, ref.digest)


@dataclass(frozen=True)
class Platform:
    """An OCI platform: os, architecture and optional variant."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


_MACHINE_ARCH = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
    "mips": ("mips", ""),
    "mipsel": ("mipsle", ""),
    "mips64": ("mips64", ""),
}

_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


def parse_platform(text: str) -> Platform:
    """Parse ``os/arch[/variant]`` (``linux/arm64/v8``); raises `InvalidReference`."""
    parts = text.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidReference(f"invalid platform {text!r}: expected OS/ARCH or OS/ARCH/VARIANT")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else "")


def host_platform(machine: str | None = None) -> Platform:
    """The platform of this host (``platform.machine()`` mapped to OCI names)."""
    machine = machine or _platform.machine()
    arch, variant = _MACHINE_ARCH.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


def _variant(arch: str, variant: str) -> str:
    return variant or _DEFAULT_VARIANT.get(arch, "")


def platform_matches(wanted: Platform, candidate: dict[str, Any]) -> bool:
    """Whether an index entry's ``platform`` object satisfies ``wanted``.

    The variant is compared after filling in the usual default (``arm64`` means
    ``v8``, ``arm`` means ``v7``), so ``linux/arm64`` matches ``linux/arm64/v8``.
    """
    if candidate.get("os") != wanted.os or candidate.get("architecture") != wanted.architecture:
        return False
    have = _variant(wanted.architecture, str(candidate.get("variant", "")))
    return have == _variant(wanted.architecture, wanted.variant)


def select_manifest(index: dict[str, Any], wanted: Platform) -> dict[str, Any] | None:
    """The descriptor in an image index for ``wanted``, or None when there is none."""
    for entry in index.get("manifests", []):
        if isinstance(entry, dict) and platform_matches(wanted, entry.get("platform") or {}):
            return entry
    return None


def index_platforms(index: dict[str, Any]) -> list[str]:
    """The platforms an image index offers, as strings (attestation entries left out)."""
    found = []
    for entry in index.get("manifests", []):
        plat = entry.get("platform") or {} if isinstance(entry, dict) else {}
        if plat.get("os") and plat.get("os") != "unknown":
            found.append(
                str(Platform(plat["os"], plat.get("architecture", ""), plat.get("variant", "")))
            )
    return found
