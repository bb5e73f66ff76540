# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Pull and push images over the OCI distribution API.

The client knows nothing of the image store. A pull writes blobs through a
`BlobSink` (``has_blob``, ``temp_path``, ``commit_blob``); a push reads them
through a `BlobSource` (``blob_path``). A pull first downloads every missing
blob into temporary files, checking sizes and digests, and commits them (config,
layers, then manifests) only when all arrived, so a failed pull leaves the sink
as it was. Downloads run in parallel and resume with an HTTP ``Range`` request
after a broken transfer.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    sha256_digest,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_auth import (
    Credentials,
    find_credentials,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_reference import (
    Platform,
    RegistryRef,
    host_platform,
    index_platforms,
    select_manifest,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_transport import (
    DigestMismatch,
    FileBody,
    NetworkFailure,
    NotFound,
    PlatformNotFound,
    ProtocolError,
    RegistryError,
    RegistryOptions,
    RegistrySession,
    Response,
    Target,
    Unauthorized,
    error_codes,
    error_detail,
)

DOCKER_LIST = DOCKER_MANIFEST_LIST
# Tuples (not oci_manifest's sets): the Accept header lists them in this order.
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join(MANIFEST_TYPES + INDEX_TYPES)
MAX_MANIFEST = 4 << 20


class BlobSink(Protocol):
    """Where pulled blobs go (the image store, or a plain OCI layout)."""

    def has_blob(self, digest: str) -> bool: ...

    def temp_path(self) -> Path:
        """A new, empty file path on the sink's filesystem for one download."""

    def commit_blob(self, digest: str, temp: Path) -> None:
        """Move a verified download into place (the client checked its digest)."""


class BlobSource(Protocol):
    """Where pushed blobs come from."""

    def blob_path(self, digest: str) -> Path: ...


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: media type, digest and size."""

    media_type: str
    digest: str
    size: int

    @classmethod
    def from_json(cls, data: object, where: str, target: Target) -> Descriptor:
        if not isinstance(data, dict):
            raise ProtocolError(target, f"{where} is not a descriptor object")
        digest, size = data.get("digest"), data.get("size")
        if not isinstance(digest, str) or ":" not in digest or not isinstance(size, int):
            raise ProtocolError(target, f"{where} lacks a valid digest or size")
        return cls(str(data.get("mediaType", "")), digest, size)


@dataclass
class Manifest:
    """A fetched manifest or index: raw bytes, media type and digest."""

    raw: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        data = json.loads(self.raw.decode("utf-8"))
        return data if isinstance(data, dict) else {}


@dataclass
class Stats:
    """What went over the network during one operation (thread-safe counters)."""

    fetched: list[str] = field(default_factory=list)
    bytes: int = 0
    resumed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, count: int) -> None:
        with self.lock:
            self.bytes += count


@dataclass
class PullResult:
    """The outcome of a pull; every digest in it is in the sink afterwards."""

    ref: RegistryRef
    manifest: Manifest
    index: Manifest | None
    platform: str
    config: Descriptor
    layers: list[Descriptor]
    fetched: list[str]
    skipped: list[str]
    bytes_fetched: int
    resumed: int


@dataclass
class PushResult:
    """The outcome of a push: the manifest digest and what happened to each blob."""

    ref: RegistryRef
    digest: str
    blobs: dict[str, str]
    bytes_sent: int


class _Cancelled(Exception):
    pass


@dataclass
class _PushPlan:
    ref: RegistryRef
    source: BlobSource
    mount_from: tuple[str, ...]
    chunk_size: int
    result: PushResult


def _media_type(resp: Response, raw: bytes) -> str:
    media = resp.header("Content-Type").split(";")[0].strip()
    if media in MANIFEST_TYPES + INDEX_TYPES:
        return media
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError:
        return media
    if isinstance(data, dict):
        if data.get("mediaType"):
            return str(data["mediaType"])
        if "manifests" in data:
            return OCI_INDEX
        if "layers" in data:
            return OCI_MANIFEST
    return media


def _check_status(resp: Response, target: Target, what: str) -> None:
    """Raise the error class matching a failed answer."""
    detail = error_detail(resp.body) or f"HTTP {resp.status}"
    if resp.status in (401, 403):
        raise Unauthorized(
            target,
            f"access to {what} denied ({detail})",
            "Check the credentials and that this user may access the repository.",
        )
    if resp.status == 404:
        codes = error_codes(resp.body)
        if "NAME_UNKNOWN" in codes:
            raise NotFound(target, f"repository does not exist ({detail})")
        raise NotFound(target, f"{what} not found ({detail})")
    raise ProtocolError(target, f"{what}: unexpected answer {detail}")


class RegistryClient:
    """A distribution-API client: one session (connections, tokens) per registry host."""

    def __init__(self, options: RegistryOptions | None = None) -> None:
        self.options = options or RegistryOptions()
        self._sessions: dict[str, RegistrySession] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()

    def credentials(self, ref: RegistryRef) -> Credentials | None:
        if self.options.username:
            return Credentials(self.options.username, self.options.password or "", "options")
        return find_credentials(ref.registry, ref.repository, self.options.auth_file)

    def session(self, ref: RegistryRef) -> RegistrySession:
        with self._lock:
            session = self._sessions.get(ref.api_host)
            if session is None:
                session = RegistrySession(ref.api_host, self.options, self.credentials(ref))
                self._sessions[ref.api_host] = session
            return session

    @staticmethod
    def target(ref: RegistryRef, reference: str | None = None) -> Target:
        return Target(ref.registry, ref.repository, reference or ref.reference)

    # -- reading ----------------------------------------------------------------------

    def ping(self, ref: RegistryRef) -> None:
        """Check that ``/v2/`` answers (and that the credentials, if any, work)."""
        target = Target(ref.registry)
        resp = self.session(ref).request(
            "GET", "/v2/", target, (f"repository:{ref.repository}:pull",)
        )
        if resp.status != 200:
            _check_status(resp, target, "the /v2/ API")

    def get_manifest(self, ref: RegistryRef, reference: str | None = None) -> Manifest:
        """Fetch a manifest or index by tag or digest, checking its digest."""
        reference = reference or ref.reference
        target = self.target(ref, reference)
        path = f"/v2/{ref.repository}/manifests/{urllib.parse.quote(reference, safe=':')}"
        resp = self.session(ref).request(
            "GET",
            path,
            target,
            (f"repository:{ref.repository}:pull",),
            headers={"Accept": ACCEPT},
        )
        if resp.status != 200:
            _check_status(resp, target, f"manifest {reference}")
        if len(resp.body) > MAX_MANIFEST:
            raise ProtocolError(target, f"manifest of {len(resp.body)} bytes is implausibly large")
        media = _media_type(resp, resp.body)
        if media not in MANIFEST_TYPES + INDEX_TYPES:
            raise ProtocolError(
                target,
                f"unsupported manifest media type {media!r}",
                "Only OCI and Docker schema 2 manifests and indexes are supported.",
            )
        if reference.startswith(("sha256:", "sha512:")):
            algo = reference.split(":", 1)[0]
            actual = f"{algo}:" + hashlib.new(algo, resp.body).hexdigest()
            if actual != reference:
                raise DigestMismatch(target, f"manifest has digest {actual}, expected {reference}")
            return Manifest(resp.body, media, reference)
        digest = sha256_digest(resp.body)
        announced = resp.header("Docker-Content-Digest")
        if announced.startswith("sha256:") and announced != digest:
            raise DigestMismatch(
                target, f"manifest has digest {digest}, registry announced {announced}"
            )
        return Manifest(resp.body, media, digest)

    def resolve(
        self, ref: RegistryRef, platform: Platform | None = None
    ) -> tuple[Manifest, Manifest | None, str]:
        """The image manifest for ``platform`` (the host's by default).

        Returns (manifest, index or None, platform string).
        """
        wanted = platform or host_platform()
        first = self.get_manifest(ref)
        if first.media_type in MANIFEST_TYPES:
            return first, None, str(wanted) if platform else ""
        entry = select_manifest(first.json(), wanted)
        if entry is None:
            offered = ", ".join(index_platforms(first.json())) or "none"
            raise PlatformNotFound(
                self.target(ref),
                f"platform {wanted} is not in the image index (it offers: {offered})",
                "Choose one of the offered platforms with the 'platform' option.",
            )
        desc = Descriptor.from_json(entry, "index entry", self.target(ref))
        manifest = self.get_manifest(ref, desc.digest)
        if manifest.media_type not in MANIFEST_TYPES:
            raise ProtocolError(self.target(ref), f"index entry {desc.digest} is not a manifest")
        return manifest, first, str(wanted)

    def _blob_response(self, ref: RegistryRef, desc: Descriptor, offset: int) -> Response:
        target = self.target(ref, desc.digest)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = self.session(ref).request(
            "GET",
            f"/v2/{ref.repository}/blobs/{desc.digest}",
            target,
            (f"repository:{ref.repository}:pull",),
            headers=headers,
            stream=True,
        )
        if resp.status not in (200, 206):
            _check_status(resp, target, f"blob {desc.digest}")
        if resp.status == 206 and not resp.header("Content-Range").startswith(f"bytes {offset}-"):
            resp.release(reuse=False)
            raise ProtocolError(
                target, f"range answer {resp.header('Content-Range')!r} does not start at {offset}"
            )
        return resp

    def _copy_body(
        self, resp: Response, out: IO[bytes], state: _Download, cancel: threading.Event
    ) -> None:
        while True:
            if cancel.is_set():
                raise _Cancelled
            chunk = resp.raw.read(self.options.chunk_size)
            if not chunk:
                break
            if state.received + len(chunk) > state.desc.size:
                raise DigestMismatch(
                    state.target,
                    f"blob {state.desc.digest} is larger than the {state.desc.size} bytes its "
                    "descriptor gives",
                )
            out.write(chunk)
            state.hasher.update(chunk)
            state.received += len(chunk)
            state.stats.add(len(chunk))
        if state.received < state.desc.size:
            raise http.client.IncompleteRead(b"", state.desc.size - state.received)

    def fetch_blob(
        self,
        ref: RegistryRef,
        desc: Descriptor,
        dest: Path,
        stats: Stats | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        """Download one blob into ``dest``, resuming broken transfers; verify its digest."""
        state = _Download(desc, self.target(ref, desc.digest), stats or Stats())
        cancel = cancel or threading.Event()
        failures = 0
        with open(dest, "wb") as out:
            while True:
                resp = self._blob_response(ref, desc, state.received)
                if resp.status == 200 and state.received:
                    state.restart(out)
                try:
                    self._copy_body(resp, out, state, cancel)
                    resp.release()
                    break
                except (OSError, http.client.HTTPException) as exc:
                    resp.release(reuse=False)
                    failures += 1
                    if failures > self.options.retries:
                        raise NetworkFailure(
                            state.target,
                            f"download broke off at byte {state.received} of {desc.size} "
                            f"{failures} times: {type(exc).__name__}: {exc}",
                            "Check the network path to the registry, or raise 'retries'.",
                        ) from exc
                    state.stats.resumed += 1
                    time.sleep(self.options.backoff * failures)
                except BaseException:
                    resp.release(reuse=False)
                    raise
        state.verify()
        with state.stats.lock:
            state.stats.fetched.append(desc.digest)

    # -- pulling ----------------------------------------------------------------------------

    def pull(
        self, ref: RegistryRef, sink: BlobSink, platform: Platform | None = None
    ) -> PullResult:
        """Fetch ``ref`` into ``sink``: nothing is committed unless every blob verified."""
        manifest, index, plat = self.resolve(ref, platform)
        return self.pull_manifest(ref, sink, manifest, index, plat)

    def manifest_blobs(
        self, ref: RegistryRef, manifest: Manifest
    ) -> tuple[Descriptor, list[Descriptor]]:
        """The config and layer descriptors of an image manifest."""
        target = self.target(ref, manifest.digest)
        data = manifest.json()
        config = Descriptor.from_json(data.get("config"), "manifest config", target)
        layers_json = data.get("layers")
        if not isinstance(layers_json, list):
            raise ProtocolError(target, "manifest has no 'layers' list")
        layers = [Descriptor.from_json(d, f"layer {i}", target) for i, d in enumerate(layers_json)]
        return config, layers

    def pull_manifest(
        self,
        ref: RegistryRef,
        sink: BlobSink,
        manifest: Manifest,
        index: Manifest | None = None,
        plat: str = "",
        *,
        documents: bool = True,
    ) -> PullResult:
        """Fetch the blobs of an already resolved manifest (see `resolve`) into ``sink``.

        With ``documents=False`` the manifest and index themselves are not written to the
        sink (the image store stores the manifest itself, in OCI form).
        """
        config, layers = self.manifest_blobs(ref, manifest)
        wanted: dict[str, Descriptor] = {}
        for desc in [config, *layers]:
            wanted.setdefault(desc.digest, desc)
        missing = [d for d in wanted.values() if not sink.has_blob(d.digest)]
        stats = Stats()
        temps: dict[str, Path] = {}
        try:
            self._download_all(ref, missing, sink, temps, stats)
            for desc in missing:
                sink.commit_blob(desc.digest, temps.pop(desc.digest))
            for doc in (manifest, index) if documents else ():
                if doc is not None and not sink.has_blob(doc.digest):
                    temp = temps[doc.digest] = sink.temp_path()
                    temp.write_bytes(doc.raw)
                    sink.commit_blob(doc.digest, temps.pop(doc.digest))
        finally:
            for temp in temps.values():
                temp.unlink(missing_ok=True)
        pinned = ref.with_digest(manifest.digest) if not ref.digest else ref
        skipped = [d for d in wanted if d not in {m.digest for m in missing}]
        return PullResult(
            pinned,
            manifest,
            index,
            plat,
            config,
            layers,
            stats.fetched,
            skipped,
            stats.bytes,
            stats.resumed,
        )

    def _download_all(
        self,
        ref: RegistryRef,
        blobs: list[Descriptor],
        sink: BlobSink,
        temps: dict[str, Path],
        stats: Stats,
    ) -> None:
        for desc in blobs:
            temps[desc.digest] = sink.temp_path()
        if not blobs:
            return
        cancel = threading.Event()
        workers = max(1, min(self.options.max_workers, len(blobs)))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(self.fetch_blob, ref, d, temps[d.digest], stats, cancel) for d in blobs
            ]
            first_error: BaseException | None = None
            for future in concurrent.futures.as_completed(futures):
                exc = future.exception()
                if exc is not None and not isinstance(exc, _Cancelled) and first_error is None:
                    first_error = exc
                    cancel.set()
        if first_error is not None:
            raise first_error

    # -- pushing ----------------------------------------------------------------------

    def blob_exists(self, ref: RegistryRef, digest: str) -> bool:
        target = self.target(ref, digest)
        resp = self.session(ref).request(
            "HEAD",
            f"/v2/{ref.repository}/blobs/{digest}",
            target,
            (f"repository:{ref.repository}:pull,push",),
        )
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        _check_status(resp, target, f"blob {digest}")
        return False

    def _location(self, resp: Response, target: Target, session: RegistrySession) -> str:
        location = resp.header("Location")
        if not location:
            raise ProtocolError(target, f"upload answer HTTP {resp.status} without a Location")
        return urllib.parse.urljoin(session.url("/"), location)

    def _start_upload(
        self, ref: RegistryRef, desc: Descriptor, mount_from: Iterable[str]
    ) -> tuple[str, str]:
        """Start an upload session, or mount the blob; returns (how, location)."""
        session = self.session(ref)
        target = self.target(ref, desc.digest)
        path = f"/v2/{ref.repository}/blobs/uploads/"
        for source in mount_from:
            if source == ref.repository:
                continue
            query = urllib.parse.urlencode({"mount": desc.digest, "from": source})
            scopes: tuple[str, ...] = (
                f"repository:{ref.repository}:pull,push",
                f"repository:{source}:pull",
            )
            resp = session.request("POST", f"{path}?{query}", target, scopes, body=b"")
            if resp.status == 201:
                return "mounted", ""
            if resp.status == 202:
                return "upload", self._location(resp, target, session)
            if resp.status not in (401, 403, 404):
                _check_status(resp, target, f"mount of blob {desc.digest} from {source}")
        scopes = (f"repository:{ref.repository}:pull,push",)
        resp = session.request("POST", path, target, scopes, body=b"")
        if resp.status != 202:
            _check_status(resp, target, "upload session")
        return "upload", self._location(resp, target, session)

    def push_blob(
        self,
        ref: RegistryRef,
        desc: Descriptor,
        path: Path,
        mount_from: Iterable[str] = (),
        chunk_size: int = 0,
    ) -> str:
        """Make the registry hold ``desc``: ``exists``, ``mounted``, ``uploaded`` or ``chunked``."""
        if self.blob_exists(ref, desc.digest):
            return "exists"
        how, location = self._start_upload(ref, desc, mount_from)
        if how == "mounted":
            return how
        session = self.session(ref)
        target = self.target(ref, desc.digest)
        scopes = (f"repository:{ref.repository}:pull,push",)
        octet = {"Content-Type": "application/octet-stream"}
        body: FileBody | bytes = FileBody(path, 0, desc.size)
        if chunk_size:
            for start in range(0, desc.size, chunk_size):
                length = min(chunk_size, desc.size - start)
                headers = {**octet, "Content-Range": f"{start}-{start + length - 1}"}
                resp = session.request(
                    "PATCH",
                    location,
                    target,
                    scopes,
                    headers=headers,
                    body=FileBody(path, start, length),
                )
                if resp.status != 202:
                    _check_status(resp, target, f"chunk at byte {start} of blob {desc.digest}")
                location = self._location(resp, target, session)
            body = b""
        sep = "&" if "?" in location else "?"
        resp = session.request(
            "PUT",
            f"{location}{sep}digest={urllib.parse.quote(desc.digest)}",
            target,
            scopes,
            headers=octet,
            body=body,
        )
        if resp.status != 201:
            _check_status(resp, target, f"upload of blob {desc.digest}")
        return "chunked" if chunk_size else "uploaded"

    def put_manifest(self, ref: RegistryRef, raw: bytes, media_type: str, reference: str) -> str:
        """PUT a manifest or index under ``reference`` (a tag or its digest)."""
        target = self.target(ref, reference)
        resp = self.session(ref).request(
            "PUT",
            f"/v2/{ref.repository}/manifests/{reference}",
            target,
            (f"repository:{ref.repository}:pull,push",),
            headers={"Content-Type": media_type},
            body=raw,
        )
        if resp.status != 201:
            _check_status(resp, target, f"manifest {reference}")
        digest = sha256_digest(raw)
        announced = resp.header("Docker-Content-Digest")
        if announced and announced != digest:
            raise DigestMismatch(target, f"registry stored digest {announced}, we sent {digest}")
        return digest

    def push(
        self,
        ref: RegistryRef,
        source: BlobSource,
        manifest: Manifest,
        mount_from: Iterable[str] = (),
        chunk_size: int = 0,
    ) -> PushResult:
        """Push an image (manifest or index, with all it references) to ``ref``."""
        result = PushResult(ref, manifest.digest, {}, 0)
        plan = _PushPlan(ref, source, tuple(mount_from), chunk_size, result)
        self._push_tree(plan, manifest)
        self.put_manifest(ref, manifest.raw, manifest.media_type, ref.tag or manifest.digest)
        return result

    def _push_tree(self, plan: _PushPlan, manifest: Manifest) -> None:
        ref, source, result = plan.ref, plan.source, plan.result
        target = self.target(ref, manifest.digest)
        data = manifest.json()
        if manifest.media_type in INDEX_TYPES:
            for i, entry in enumerate(data.get("manifests") or []):
                desc = Descriptor.from_json(entry, f"index entry {i}", target)
                raw = source.blob_path(desc.digest).read_bytes()
                child = Manifest(raw, desc.media_type or _media_type_of(raw), desc.digest)
                self._push_tree(plan, child)
                self.put_manifest(ref, raw, child.media_type, desc.digest)
            return
        blobs = [Descriptor.from_json(data.get("config"), "manifest config", target)]
        blobs += [
            Descriptor.from_json(d, f"layer {i}", target)
            for i, d in enumerate(data.get("layers") or [])
        ]

        def send(desc: Descriptor) -> str:
            path = source.blob_path(desc.digest)
            return self.push_blob(ref, desc, path, plan.mount_from, plan.chunk_size)

        workers = max(1, min(self.options.max_workers, len(blobs)))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            outcomes = list(pool.map(send, blobs))
        for desc, how in zip(blobs, outcomes, strict=True):
            result.blobs[desc.digest] = how
            if how in ("uploaded", "chunked"):
                result.bytes_sent += desc.size


def _media_type_of(raw: bytes) -> str:
    data = json.loads(raw.decode("utf-8"))
    if isinstance(data, dict) and data.get("mediaType"):
        return str(data["mediaType"])
    return OCI_INDEX if isinstance(data, dict) and "manifests" in data else OCI_MANIFEST


class _Download:
    """Progress of one blob download (survives resumption)."""

    def __init__(self, desc: Descriptor, target: Target, stats: Stats) -> None:
        self.desc = desc
        self.target = target
        self.stats = stats
        self.algorithm, self.expected = desc.digest.split(":", 1)
        try:
            self.hasher = hashlib.new(self.algorithm)
        except ValueError as exc:
            raise ProtocolError(target, f"unsupported digest algorithm {self.algorithm!r}") from exc
        self.received = 0

    def restart(self, out: IO[bytes]) -> None:
        """The registry ignored our Range request: start the file over."""
        out.seek(0)
        out.truncate()
        self.hasher = hashlib.new(self.algorithm)
        self.received = 0

    def verify(self) -> None:
        actual = self.hasher.hexdigest()
        if self.received != self.desc.size or actual != self.expected:
            raise DigestMismatch(
                self.target,
                f"blob {self.desc.digest} arrived as {self.received} bytes with digest "
                f"{self.algorithm}:{actual}",
                "The registry's copy is damaged or was tampered with; nothing was stored.",
            )


__all__ = [
    "ACCEPT",
    "BlobSink",
    "BlobSource",
    "Descriptor",
    "DigestMismatch",
    "Manifest",
    "NetworkFailure",
    "NotFound",
    "PlatformNotFound",
    "ProtocolError",
    "PullResult",
    "PushResult",
    "RegistryClient",
    "RegistryError",
    "RegistryOptions",
    "Unauthorized",
]
