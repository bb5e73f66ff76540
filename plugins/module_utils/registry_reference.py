# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Image references as a registry sees them, and platform strings.

``parse_reference`` normalises a user's image name the way the Docker and Podman
tools do: a bare ``alpine`` is ``docker.io/library/alpine:latest``, a name whose
first component looks like a host (a dot, a port or ``localhost``) names its own
registry, and ``NAME@sha256:...`` pins a manifest digest. ``RegistryRef.api_host``
is where the distribution API of that registry answers (Docker Hub's is
``registry-1.docker.io``).
"""

from __future__ import annotations

import platform as _platform
import re
from dataclasses import dataclass
from typing import Any

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::[0-9]+)?$")


class InvalidReference(ValueError):
    """An image reference or platform string that cannot be parsed."""


@dataclass(frozen=True)
class RegistryRef:
    """A normalised image reference: registry host, repository, tag and/or digest."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        """Host (and port) where the registry's ``/v2/`` API answers."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def with_digest(self, digest: str) -> RegistryRef:
        """The same repository pinned to ``digest`` (the tag is kept for display)."""
        return RegistryRef(self.registry, self.repository, self.tag, digest)


def _split_host(name: str) -> tuple[str, str]:
    """Split ``name`` into registry host and repository path (Docker's rule)."""
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        host = first
        if not _HOST.match(host):
            raise InvalidReference(f"invalid registry host {host!r}")
        if host in _HUB_ALIASES:
            host = DOCKER_HUB
        return host, rest
    return DOCKER_HUB, name


def parse_reference(text: str, default_tag: str = "latest") -> RegistryRef:
    """Parse and normalise an image reference; raises `InvalidReference` with the cause."""
    original = text
    text = text.strip()
    if not text:
        raise InvalidReference("empty image reference")
    if "://" in text:
        raise InvalidReference(f"{original!r}: give an image reference, not a URL")
    digest: str | None = None
    if "@" in text:
        text, digest = text.rsplit("@", 1)
        if not _DIGEST.match(digest):
            raise InvalidReference(f"{original!r}: invalid digest {digest!r}")
    tag: str | None = None
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, tag = text.rsplit(":", 1)
        if not _TAG.match(tag):
            raise InvalidReference(f"{original!r}: invalid tag {tag!r}")
    registry, repository = _split_host(text)
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    for component in repository.split("/"):
        if not _COMPONENT.match(component):
            raise InvalidReference(
                f"{original!r}: invalid repository component {component!r} "
                "(lowercase letters, digits and single separators . _ __ - only)"
            )
    if tag is None and digest is None:
        tag = default_tag
    return RegistryRef(registry, repository, tag, digest)


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
