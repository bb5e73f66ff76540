# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""HTTP to one registry: connections, TLS, authentication, redirects and retries.

``RegistrySession.request`` is the one place where bytes go over the network. It
answers a ``401`` by following the registry's challenge (basic credentials, or a
bearer token fetched from the ``realm`` for the request's scopes) and retries
network failures and ``5xx``/``429`` answers with a growing pause. Everything it
cannot recover from becomes a `RegistryError` that names the registry, the
repository, the reference and the cause.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Union

from ansible_collections.lapis.layers.plugins.module_utils.registry_auth import (
    Challenge,
    Credentials,
    parse_www_authenticate,
)

USER_AGENT = "lapis.layers-registry-client/1"
RETRY_STATUSES = (429, 500, 502, 503, 504)
_CERTS_DIRS = ("/etc/containers/certs.d", "/etc/docker/certs.d")


@dataclass(frozen=True)
class Target:
    """What a request is about, for error messages."""

    registry: str
    repository: str = ""
    reference: str = ""

    def describe(self) -> str:
        parts = [f"registry {self.registry}"]
        if self.repository:
            parts.append(f"repository {self.repository}")
        if self.reference:
            parts.append(f"reference {self.reference}")
        return ", ".join(parts)


class RegistryError(Exception):
    """A registry operation that failed; ``str()`` names the target and the cause."""

    kind = "error"

    def __init__(self, target: Target, cause: str, hint: str = "") -> None:
        self.target = target
        self.cause = cause
        self.hint = hint
        text = f"{target.describe()}: {cause}"
        super().__init__(f"{text}. {hint}" if hint else text)


class Unauthorized(RegistryError):
    kind = "unauthorized"


class NotFound(RegistryError):
    kind = "not_found"


class DigestMismatch(RegistryError):
    kind = "digest_mismatch"


class PlatformNotFound(RegistryError):
    kind = "platform_not_found"


class NetworkFailure(RegistryError):
    kind = "network"


class ProtocolError(RegistryError):
    kind = "protocol"


@dataclass
class RegistryOptions:
    """How to reach registries: credentials, TLS and retry policy."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    auth_file: str | None = None
    ca_path: str | None = None
    insecure_registries: tuple[str, ...] = ()
    retries: int = 3
    backoff: float = 0.5
    timeout: float = 60.0
    chunk_size: int = 1 << 20
    max_workers: int = 4


@dataclass
class FileBody:
    """A request body read from ``path`` starting at ``offset``, ``length`` bytes."""

    path: Path
    offset: int
    length: int


Body = Union[bytes, FileBody, None]


class _Refused(Exception):
    """A request we will not send (plain HTTP to a host not listed as insecure)."""


class _LimitedReader:
    """A file object that yields at most ``remaining`` bytes (for http.client)."""

    def __init__(self, handle: IO[bytes], remaining: int) -> None:
        self._handle = handle
        self._remaining = remaining

    def read(self, size: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        size = self._remaining if size < 0 else min(size, self._remaining)
        data = self._handle.read(size)
        self._remaining -= len(data)
        return data


@dataclass
class Response:
    """A registry answer. ``raw`` stays open (for streaming) until ``release()``."""

    status: int
    headers: http.client.HTTPMessage
    url: str
    raw: http.client.HTTPResponse
    body: bytes = b""
    _session: RegistrySession | None = field(default=None, repr=False)
    _key: tuple[str, str] = ("", "")

    def header(self, name: str) -> str:
        return self.headers.get(name, "") or ""

    def release(self, reuse: bool = True) -> None:
        """Finish with the response; the connection is closed unless fully read."""
        if self._session is not None:
            self._session.release(self._key, self.raw, reuse)
            self._session = None


def error_detail(body: bytes) -> str:
    """The registry's ``errors`` list as ``CODE: message`` text (empty when absent)."""
    try:
        data = json.loads(body.decode("utf-8"))
        errors = data.get("errors") or []
        texts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors]
        return "; ".join(t for t in texts if t)
    except (ValueError, AttributeError):
        return ""


def error_codes(body: bytes) -> set[str]:
    try:
        return {str(e.get("code", "")) for e in json.loads(body.decode("utf-8"))["errors"]}
    except (ValueError, KeyError, TypeError, AttributeError):
        return set()


def make_ssl_context(host: str, ca_path: str | None) -> ssl.SSLContext:
    """System CAs, plus ``ca_path`` (file or directory) and ``certs.d/HOST/*.crt``."""
    context = ssl.create_default_context()
    if ca_path:
        if Path(ca_path).is_dir():
            for cert in sorted(Path(ca_path).glob("*.crt")) + sorted(Path(ca_path).glob("*.pem")):
                context.load_verify_locations(cafile=str(cert))
        else:
            context.load_verify_locations(cafile=ca_path)
    for base in _CERTS_DIRS:
        for cert in sorted(Path(base, host).glob("*.crt")):
            context.load_verify_locations(cafile=str(cert))
    return context


class _Auth:
    """What the registry asked for, and the tokens fetched so far (shared by threads)."""

    def __init__(self, credentials: Credentials | None) -> None:
        self.credentials = credentials
        self.lock = threading.Lock()
        self.scheme = ""
        self.bearer: Challenge | None = None
        self.tokens: dict[tuple[str, ...], tuple[str, float]] = {}

    def header(self, scopes: tuple[str, ...]) -> str:
        with self.lock:
            if self.scheme == "basic" and self.credentials:
                return self.credentials.basic_header()
            token = self.tokens.get(scopes)
            if self.scheme == "bearer" and token and token[1] > time.monotonic():
                return f"Bearer {token[0]}"
        return ""


class RegistrySession:
    """Requests to one registry host over pooled, per-thread connections."""

    def __init__(
        self, host: str, options: RegistryOptions, credentials: Credentials | None = None
    ) -> None:
        self.host = host
        self.options = options
        self.insecure = host in options.insecure_registries
        self.scheme = "http" if self.insecure else "https"
        self._ssl: ssl.SSLContext | None = None
        self._local = threading.local()
        self._auth = _Auth(credentials)
        self._lock = threading.Lock()
        self._open: set[http.client.HTTPConnection] = set()  # of every thread, for close()

    # -- connections ------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        with self._lock:
            if self._ssl is None:
                self._ssl = make_ssl_context(self.host, self.options.ca_path)
            return self._ssl

    def _pool(self) -> dict[tuple[str, str], http.client.HTTPConnection]:
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        return pool

    def _connection(self, key: tuple[str, str]) -> http.client.HTTPConnection:
        pool = self._pool()
        conn = pool.get(key)
        if conn is None:
            scheme, netloc = key
            timeout = self.options.timeout
            if scheme == "https":
                conn = http.client.HTTPSConnection(netloc, timeout=timeout, context=self._context())
            else:
                conn = http.client.HTTPConnection(netloc, timeout=timeout)
            pool[key] = conn
            with self._lock:
                self._open.add(conn)
        return conn

    def _drop(self, key: tuple[str, str]) -> None:
        conn = self._pool().pop(key, None)
        if conn is not None:
            conn.close()
            with self._lock:
                self._open.discard(conn)

    def release(self, key: tuple[str, str], raw: http.client.HTTPResponse, reuse: bool) -> None:
        if not reuse or not raw.isclosed():
            raw.close()
            self._drop(key)

    def close(self) -> None:
        """Close the connections of all threads (call when no request is running)."""
        self._pool().clear()
        with self._lock:
            for conn in self._open:
                conn.close()
            self._open.clear()

    # -- one exchange -------------------------------------------------------------

    def url(self, path: str) -> str:
        return path if "://" in path else f"{self.scheme}://{self.host}{path}"

    def _send(
        self, method: str, url: str, headers: dict[str, str], body: Body
    ) -> tuple[tuple[str, str], http.client.HTTPResponse]:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "http" and parts.netloc != self.host and not self.insecure:
            # A redirect or token realm on plain HTTP would leak credentials or data.
            raise _Refused(f"refusing plain HTTP to {parts.netloc} (not an insecure registry)")
        key = (parts.scheme, parts.netloc)
        conn = self._connection(key)
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        headers = {"User-Agent": USER_AGENT, **headers}
        try:
            if isinstance(body, FileBody):
                headers["Content-Length"] = str(body.length)
                with open(body.path, "rb") as handle:
                    handle.seek(body.offset)
                    conn.request(method, target, _LimitedReader(handle, body.length), headers)
            else:
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                conn.request(method, target, body, headers)
            return key, conn.getresponse()
        except BaseException:
            self._drop(key)
            raise

    def _exchange(
        self,
        *,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Body,
        auth: str,
        stream: bool,
    ) -> Response:
        """One request, following redirects (credentials only go to the registry)."""
        for _hop in range(6):
            send = dict(headers)
            if auth and urllib.parse.urlsplit(url).netloc == self.host:
                send["Authorization"] = auth
            key, raw = self._send(method, url, send, body)
            if raw.status in (301, 302, 303, 307, 308) and method in ("GET", "HEAD"):
                location = raw.getheader("Location", "")
                raw.read()
                self.release(key, raw, True)
                url = urllib.parse.urljoin(url, location)
                continue
            resp = Response(raw.status, raw.headers, url, raw, _session=self, _key=key)
            if not stream or raw.status >= 300:
                resp.body = raw.read() if method != "HEAD" else b""
                resp.release()
            return resp
        raise http.client.HTTPException(f"too many redirects for {url}")

    # -- authentication -----------------------------------------------------------

    def _fetch_token(self, challenge: Challenge, scopes: tuple[str, ...], target: Target) -> None:
        realm = challenge.realm
        if not realm.startswith(("https://", "http://")):
            raise ProtocolError(target, f"bearer challenge without a usable realm: {realm!r}")
        wanted = list(scopes)
        for scope in challenge.params.get("scope", "").split():
            if scope not in wanted:
                wanted.append(scope)
        query = [("service", challenge.params["service"])] if "service" in challenge.params else []
        query += [("scope", s) for s in wanted]
        creds = self._auth.credentials
        if creds:
            query.append(("account", creds.username))
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        headers = {"Authorization": creds.basic_header()} if creds else {}
        try:
            key, raw = self._send("GET", url, headers, None)
            body = raw.read()
            self.release(key, raw, True)
        except _Refused as exc:
            raise ProtocolError(target, f"token realm {realm}: {exc}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise NetworkFailure(target, f"token server {realm} unreachable: {exc}") from exc
        if raw.status in (401, 403):
            who = f"user {creds.username!r}" if creds else "anonymous access"
            raise Unauthorized(
                target,
                f"token server {realm} refused {who} (HTTP {raw.status})",
                "Check username and password, or the auth file entry for this registry.",
            )
        if raw.status != 200:
            raise ProtocolError(target, f"token server {realm} answered HTTP {raw.status}")
        try:
            data = json.loads(body.decode("utf-8"))
            token = str(data.get("token") or data.get("access_token") or "")
            lifetime = max(float(data.get("expires_in") or 60), 10.0)
        except (ValueError, AttributeError) as exc:
            raise ProtocolError(target, f"token server {realm} sent no JSON token: {exc}") from exc
        if not token:
            raise ProtocolError(target, f"token server {realm} sent an empty token")
        with self._auth.lock:
            self._auth.tokens[scopes] = (token, time.monotonic() + lifetime - 5)

    def _answer_challenge(
        self, resp: Response, scopes: tuple[str, ...], sent: str, target: Target
    ) -> None:
        """Prepare credentials for a retry after ``401``; raises when none would help."""
        try:
            challenges = parse_www_authenticate(resp.header("WWW-Authenticate"))
        except ValueError as exc:
            raise ProtocolError(target, str(exc)) from exc
        by_scheme = {c.scheme: c for c in challenges}
        creds = self._auth.credentials
        detail = error_detail(resp.body)
        if "bearer" in by_scheme and not sent.startswith("Bearer"):
            with self._auth.lock:
                self._auth.scheme = "bearer"
                self._auth.bearer = by_scheme["bearer"]
            self._fetch_token(by_scheme["bearer"], scopes, target)
            return
        if "basic" in by_scheme and creds and not sent:
            with self._auth.lock:
                self._auth.scheme = "basic"
            return
        if not creds:
            raise Unauthorized(
                target,
                f"authentication required ({detail or 'HTTP 401'})",
                "Give username and password, or log in with podman/docker login.",
            )
        raise Unauthorized(
            target,
            f"credentials of user {creds.username!r} (from {creds.source}) were refused"
            f" ({detail or 'HTTP 401'})",
            "Check username and password, or the auth file entry for this registry.",
        )

    # -- the public entry point ---------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        target: Target,
        scopes: Iterable[str] = (),
        *,
        headers: dict[str, str] | None = None,
        body: Body = None,
        stream: bool = False,
    ) -> Response:
        """Send a request, authenticating and retrying; any status is returned.

        Network failures, ``429`` and ``5xx`` are retried ``options.retries`` times;
        after that a `NetworkFailure` names the last cause.
        """
        scope_key = tuple(scopes)
        url = self.url(path)
        attempt = 0
        auth_rounds = 0
        while True:
            sent = self._auth.header(scope_key)
            try:
                resp = self._exchange(
                    method=method,
                    url=url,
                    headers=headers or {},
                    body=body,
                    auth=sent,
                    stream=stream,
                )
            except _Refused as exc:
                raise ProtocolError(target, str(exc)) from exc
            except ssl.SSLCertVerificationError as exc:
                raise NetworkFailure(
                    target,
                    f"TLS certificate of {urllib.parse.urlsplit(url).netloc} not trusted: "
                    f"{exc.verify_message}",
                    "Give the registry's CA certificate as ca_path, or list the registry in "
                    "insecure_registries if it only speaks plain HTTP.",
                ) from exc
            except ssl.SSLError as exc:
                if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
                    attempt = self._pause(attempt, target, f"{method} {url}: {exc}")
                    continue
                raise NetworkFailure(
                    target,
                    f"TLS with {urllib.parse.urlsplit(url).netloc} failed: {exc}",
                    "If the registry only speaks plain HTTP, list it in insecure_registries.",
                ) from exc
            except (OSError, http.client.HTTPException) as exc:
                cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                attempt = self._pause(attempt, target, f"{method} {url}: {cause}")
                continue
            if resp.status == 401 and auth_rounds < 2:
                auth_rounds += 1
                self._answer_challenge(resp, scope_key, sent, target)
                continue
            if resp.status in RETRY_STATUSES:
                detail = error_detail(resp.body) or f"HTTP {resp.status}"
                attempt = self._pause(attempt, target, f"{method} {url}: {detail}")
                continue
            return resp

    def _pause(self, attempt: int, target: Target, cause: str) -> int:
        if attempt >= self.options.retries:
            raise NetworkFailure(
                target,
                f"{cause} (gave up after {attempt + 1} attempts)",
                "Check that the registry is reachable, or raise 'retries'.",
            )
        time.sleep(self.options.backoff * (2**attempt))
        return attempt + 1
