# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Image references: parse a user's image name and normalise it the way Docker does.

``parse_image_ref("alpine")`` gives ``docker.io/library/alpine:latest``; a first
component with a dot, a port or ``localhost`` (or upper case) names its own registry
(``host:5000/a/b:tag``); ``name@sha256:<hex>`` pins a manifest digest. The normalised
text (``str(ref)``) is what the image store writes as the
``org.opencontainers.image.ref.name`` annotation of its ``index.json``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
DEFAULT_TAG = "latest"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_MAX_NAME = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_HOST = re.compile(
    r"(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)(?::[0-9]+)?"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")


class InvalidReference(ValueError):
    """An image reference that does not follow the reference grammar."""


@dataclass(frozen=True)
class ImageRef:
    """A normalised image reference: registry domain, repository path, tag and/or digest."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``domain/path`` without tag or digest."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def familiar(self) -> str:
        """The short form users type (``alpine:latest``, ``host:5000/a/b:tag``)."""
        path = self.path
        if self.domain == DOCKER_HUB and path.startswith("library/") and path.count("/") == 1:
            path = path[len("library/") :]
        text = path if self.domain == DOCKER_HUB else f"{self.domain}/{path}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _split_domain(name: str) -> tuple[str, str]:
    """Split ``name`` into registry domain and repository path (Docker's rule)."""
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        if not _HOST.fullmatch(first):
            raise InvalidReference(f"invalid registry host {first!r}")
        domain = DOCKER_HUB if first in _HUB_ALIASES else first
        path = rest
    else:
        domain, path = DOCKER_HUB, name
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return domain, path


def _split_tag_digest(text: str) -> tuple[str, str | None, str | None]:
    """Split ``name[:tag][@digest]`` into its three parts (tag and digest unchecked)."""
    name, at, digest = text.partition("@")
    tag: str | None = None
    last = name.rfind("/")
    colon = name.rfind(":")
    if colon > last:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, (digest if at else None)


def parse_image_ref(text: str, default_tag: str = DEFAULT_TAG) -> ImageRef:
    """Parse and normalise an image reference; raise ``InvalidReference`` saying why not."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidReference("empty image reference")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidReference(f"image reference {text!r} contains white space")
    name, tag, digest = _split_tag_digest(text)
    if digest is not None and not _DIGEST.fullmatch(digest):
        raise InvalidReference(
            f"invalid digest {digest!r} in image reference {text!r}: "
            "expected sha256: followed by 64 lowercase hex digits"
        )
    if tag is not None and not _TAG.fullmatch(tag):
        raise InvalidReference(f"invalid tag {tag!r} in image reference {text!r}")
    if not name:
        raise InvalidReference(f"image reference {text!r} has no repository name")
    domain, path = _split_domain(name)
    for component in path.split("/"):
        if not _COMPONENT.fullmatch(component):
            raise InvalidReference(
                f"invalid repository name component {component!r} in image reference "
                f"{text!r}: use lowercase letters, digits and single separators (. _ -)"
            )
    if len(f"{domain}/{path}") > _MAX_NAME:
        raise InvalidReference(f"repository name in {text!r} is longer than {_MAX_NAME}")
    if tag is None and digest is None:
        tag = default_tag
    return ImageRef(domain=domain, path=path, tag=tag, digest=digest)


def normalize_image_ref(text: str) -> str:
    """The normalised text of a reference (``alpine`` -> ``docker.io/library/alpine:latest``)."""
    return str(parse_image_ref(text))


def is_digest(text: str) -> bool:
    """Whether ``text`` is a ``sha256:<64 lowercase hex>`` digest."""
    return bool(_DIGEST.fullmatch(text))
