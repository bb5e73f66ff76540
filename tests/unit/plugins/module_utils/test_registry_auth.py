"""WWW-Authenticate parsing and Docker/Podman auth files."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.registry_auth import (
    AuthFileError,
    Challenge,
    auth_file_candidates,
    find_credentials,
    parse_www_authenticate,
    read_auth_file,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_transport import (
    error_codes,
    error_detail,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/alpine:pull"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/alpine:pull",
                    },
                )
            ],
        ),
        ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
        ("basic realm=lapis", [Challenge("basic", {"realm": "lapis"})]),
        (
            'Bearer realm="https://t/x", scope="repository:a/b:pull,push"',
            [Challenge("bearer", {"realm": "https://t/x", "scope": "repository:a/b:pull,push"})],
        ),
        (
            'Bearer realm="https://t/x",error="insufficient_scope", Basic realm="r"',
            [
                Challenge("bearer", {"realm": "https://t/x", "error": "insufficient_scope"}),
                Challenge("basic", {"realm": "r"}),
            ],
        ),
        (r'Basic realm="say \"hi\", ok"', [Challenge("basic", {"realm": 'say "hi", ok'})]),
        ("Negotiate", [Challenge("negotiate", {})]),
        ("", []),
    ],
)
def test_parse_www_authenticate(header: str, expected: list[Challenge]) -> None:
    assert parse_www_authenticate(header) == expected


@pytest.mark.parametrize("header", ['Bearer realm="unterminated', '=realm"x"'])
def test_parse_www_authenticate_rejects_malformed(header: str) -> None:
    with pytest.raises(ValueError, match="WWW-Authenticate"):
        parse_www_authenticate(header)


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_docker_config_hub_key_matches_docker_io(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config.json",
        {"auths": {"https://index.docker.io/v1/": {"auth": _auth("hub", "pw:with:colons")}}},
    )
    creds = read_auth_file(path, "docker.io", "library/alpine")
    assert creds is not None
    assert (creds.username, creds.password, creds.source) == ("hub", "pw:with:colons", str(path))
    assert "pw:with" not in repr(creds)


def test_podman_namespace_entry_wins_over_host_entry(tmp_path: Path) -> None:
    path = write(
        tmp_path / "auth.json",
        {
            "auths": {
                "quay.io": {"auth": _auth("host", "a")},
                "quay.io/team": {"auth": _auth("team", "b")},
                "quay.io/teamother": {"auth": _auth("wrong", "c")},
            }
        },
    )
    assert read_auth_file(path, "quay.io", "team/app").username == "team"  # type: ignore[union-attr]
    assert read_auth_file(path, "quay.io", "other/app").username == "host"  # type: ignore[union-attr]
    assert read_auth_file(path, "ghcr.io", "team/app") is None


def test_host_with_port_and_scheme_key(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", {"auths": {"https://reg:5000": {"auth": _auth("u", "p")}}})
    assert read_auth_file(path, "reg:5000").username == "u"  # type: ignore[union-attr]
    assert read_auth_file(path, "reg") is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"auth": "%%%not base64"}, "invalid base64"),
        ({"auth": base64.b64encode(b"no-colon").decode()}, "user:password"),
        ("not an object", "not an object"),
    ],
)
def test_broken_entries_name_the_file_and_entry(
    tmp_path: Path, entry: object, message: str
) -> None:
    path = write(tmp_path / "auth.json", {"auths": {"reg.example": entry}})
    with pytest.raises(AuthFileError, match=message) as err:
        read_auth_file(path, "reg.example")
    assert str(path) in str(err.value) and "reg.example" in str(err.value)


def test_unreadable_json_is_an_error_and_missing_file_is_not(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(AuthFileError, match="cannot read auth file"):
        read_auth_file(bad, "x.io")
    assert read_auth_file(tmp_path / "absent.json", "x.io") is None


def test_candidates_order_and_lookup(tmp_path: Path) -> None:
    env = {
        "HOME": str(tmp_path / "home"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "DOCKER_CONFIG": str(tmp_path / "docker"),
    }
    assert auth_file_candidates(env) == [
        tmp_path / "run/containers/auth.json",
        tmp_path / "home/.config/containers/auth.json",
        tmp_path / "docker/config.json",
    ]
    write(tmp_path / "docker/config.json", {"auths": {"r.io": {"auth": _auth("docker", "1")}}})
    assert find_credentials("r.io", env=env).username == "docker"  # type: ignore[union-attr]
    write(
        tmp_path / "run/containers/auth.json", {"auths": {"r.io": {"auth": _auth("podman", "2")}}}
    )
    assert find_credentials("r.io", env=env).username == "podman"  # type: ignore[union-attr]
    assert find_credentials("other.io", env=env) is None
    env["REGISTRY_AUTH_FILE"] = str(
        write(
            tmp_path / "explicit.json", {"auths": {"r.io": {"username": "plain", "password": "3"}}}
        )
    )
    assert find_credentials("r.io", env=env).username == "plain"  # type: ignore[union-attr]


def test_explicit_auth_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(AuthFileError, match="does not exist"):
        find_credentials("r.io", auth_file=str(tmp_path / "missing.json"))


def test_registry_error_bodies() -> None:
    body = json.dumps(
        {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown", "detail": {}}]}
    ).encode()
    assert error_detail(body) == "MANIFEST_UNKNOWN: manifest unknown"
    assert error_codes(body) == {"MANIFEST_UNKNOWN"}
    assert error_detail(b"<html>") == ""
    assert error_codes(b"{}") == set()
