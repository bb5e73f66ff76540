# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Registry credentials and authentication challenges.

* ``parse_www_authenticate`` reads a ``WWW-Authenticate`` header into challenges
  (``Basic realm=...``, ``Bearer realm=...,service=...,scope=...``).
* ``find_credentials`` looks a registry up in the Docker and Podman auth files
  (``auths`` entries whose ``auth`` is base64 ``user:password``).

Credential helpers (``credsStore``/``credHelpers``) are not run: they are programs
outside our control; a registry served only through one needs ``username`` and
``password`` given as options instead.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ansible_collections.lapis.layers.plugins.module_utils.registry_reference import (
    DOCKER_HUB,
)


class AuthFileError(ValueError):
    """An auth file that exists but cannot be used."""


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or token) for one registry."""

    username: str
    password: str = field(repr=False)
    source: str = "options"

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class Challenge:
    """One authentication challenge: its scheme (lower case) and parameters."""

    scheme: str
    params: dict[str, str]

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _read_token(text: str, pos: int) -> tuple[str, int]:
    start = pos
    while pos < len(text) and text[pos] not in ' \t,="':
        pos += 1
    return text[start:pos], pos


def _read_quoted(text: str, pos: int) -> tuple[str, int]:
    """Read a quoted string starting at the opening quote; handles backslash escapes."""
    out = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
            continue
        if char == '"':
            return "".join(out), pos + 1
        out.append(char)
        pos += 1
    raise ValueError("unterminated quoted string in WWW-Authenticate")


def _read_param(text: str, pos: int) -> tuple[str, str, int] | None:
    """Read ``key=value`` at ``pos``; None when the next token is not a parameter."""
    key, after = _read_token(text, pos)
    after = _skip_space(text, after)
    if not key or after >= len(text) or text[after] != "=":
        return None
    after = _skip_space(text, after + 1)
    if after < len(text) and text[after] == '"':
        value, after = _read_quoted(text, after)
    else:
        value, after = _read_token(text, after)
    return key.lower(), value, after


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into its challenges, in order.

    Raises ValueError on a malformed header (an unterminated quote, no scheme).
    """
    challenges: list[Challenge] = []
    pos = _skip_space(header, 0)
    while pos < len(header):
        scheme, pos = _read_token(header, pos)
        if not scheme:
            raise ValueError(f"malformed WWW-Authenticate header: {header!r}")
        params: dict[str, str] = {}
        pos = _skip_space(header, pos)
        while pos < len(header):
            parsed = _read_param(header, pos)
            if parsed is None:
                break
            key, value, pos = parsed
            params[key] = value
            pos = _skip_space(header, pos)
            if pos < len(header) and header[pos] == ",":
                pos = _skip_space(header, pos + 1)
        challenges.append(Challenge(scheme.lower(), params))
        while pos < len(header) and header[pos] in " \t,":
            pos += 1
    return challenges


def auth_file_candidates(env: dict[str, str] | None = None) -> list[Path]:
    """Auth files in the order Podman and Docker read them."""
    env = dict(os.environ) if env is None else env
    home = Path(env.get("HOME") or Path.home())
    paths: list[Path] = []
    if env.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        paths.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    paths.append(home / ".config" / "containers" / "auth.json")
    docker_dir = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else home / ".docker"
    paths.append(docker_dir / "config.json")
    return paths


def _entry_host(key: str) -> str:
    """Normalise an ``auths`` key (``https://index.docker.io/v1/``, ``host:5000/ns``)."""
    key = key.strip()
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
            key = key.split("/", 1)[0]
            break
    key = key.rstrip("/")
    if key.split("/", 1)[0] in ("index.docker.io", "registry-1.docker.io"):
        key = DOCKER_HUB + key[len(key.split("/", 1)[0]) :]
    return key


def _decode_entry(path: Path, key: str, entry: object) -> Credentials | None:
    if not isinstance(entry, dict):
        raise AuthFileError(f"{path}: entry {key!r} is not an object")
    if entry.get("username") and entry.get("password"):
        return Credentials(str(entry["username"]), str(entry["password"]), str(path))
    encoded = entry.get("auth")
    if not encoded:
        return None
    try:
        raw = base64.b64decode(str(encoded), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise AuthFileError(f"{path}: entry {key!r} has an invalid base64 'auth': {exc}") from exc
    user, sep, password = raw.partition(":")
    if not sep or not user:
        raise AuthFileError(f"{path}: entry {key!r}: 'auth' does not decode to user:password")
    return Credentials(user, password, str(path))


def read_auth_file(path: Path, registry: str, repository: str = "") -> Credentials | None:
    """Credentials for ``registry`` (and optionally ``repository``) in one auth file.

    An entry for ``host/namespace`` wins over one for ``host`` (Podman's rule: the
    longest matching prefix of ``host/repository``).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AuthFileError(f"cannot read auth file {path}: {exc}") from exc
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        return None
    full = f"{registry}/{repository}" if repository else registry
    best: tuple[int, str] | None = None
    for key in auths:
        host = _entry_host(key)
        matches = full == host or full.startswith(host + "/")
        if matches and (best is None or len(host) > best[0]):
            best = (len(host), key)
    if best is None:
        return None
    return _decode_entry(path, best[1], auths[best[1]])


def find_credentials(
    registry: str,
    repository: str = "",
    auth_file: str | None = None,
    env: dict[str, str] | None = None,
) -> Credentials | None:
    """Credentials for ``registry`` from ``auth_file`` or the usual auth files."""
    if auth_file and not Path(auth_file).is_file():
        raise AuthFileError(f"auth file {auth_file} does not exist")
    paths = [Path(auth_file)] if auth_file else auth_file_candidates(env)
    for path in paths:
        found = read_auth_file(path, registry, repository)
        if found is not None:
            return found
    return None
