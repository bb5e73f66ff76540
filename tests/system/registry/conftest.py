"""Real registries for the registry client tests.

Debian's ``docker-registry`` (the Docker distribution registry v2) is started on
this area's loopback addresses with TLS from a throw-away CA made with
``openssl``, in two configurations:

* ``basic_registry``: htpasswd basic auth (bcrypt hashes from the C library's
  ``crypt``; docker-registry accepts nothing else);
* ``token_registry``: bearer-token auth against ``TokenServer``, a small HTTPS
  token service run in a thread here. Its tokens are JWTs signed (RS256, with
  ``cryptography``, which ansible-core already depends on) by a key whose
  certificate the registry trusts through ``auth.token.rootcertbundle``.

``CuttingProxy`` forwards TCP to a registry and cuts one connection after a
number of bytes, to break a blob download half-way. Images are written as OCI
layouts by ``make_image`` (busybox-static plus small files) and pushed with
skopeo. Every server is stopped by PID (or shut down) in the fixture finalizers.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.server
import io
import json
import secrets
import shutil
import socket
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ansible_collections.lapis.layers.plugins.module_utils.registry_transport import (
    RegistryOptions,
)

REGISTRY_ADDR = "127.0.0.31"
SIDE_ADDR = "127.0.0.32"
PORTS = {"basic": 5031, "token": 5032, "token_server": 5033, "proxy": 5034, "plain": 5035}
USER, PASSWORD = "lapis", "s3cret-pass"
SERVICE, ISSUER = "lapis-test-registry", "lapis-test-issuer"
BUSYBOX = Path("/bin/busybox")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass
class Pki:
    """A throw-away CA, a server certificate for both addresses, a token-signing key."""

    dir: Path
    ca: Path
    cert: Path
    key: Path
    token_cert: Path
    token_key: Path
    cert_dir: Path  # a skopeo --cert-dir holding the CA

    def ssl_server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_pki(d: Path) -> Pki:
    """Write the CA, the server certificate and the token-signing key into ``d``."""
    ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2"
    _openssl(*f"req -x509 {ec} -keyout ca.key -out ca.crt".split(), "-subj", "/CN=lapis CA", cwd=d)
    _openssl(*f"req -new {ec} -keyout server.key -out server.csr".split(),
             "-subj", f"/CN={REGISTRY_ADDR}", cwd=d)  # fmt: skip
    (d / "san.ext").write_text(f"subjectAltName=IP:{REGISTRY_ADDR},IP:{SIDE_ADDR}\n")
    sign = "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2"
    _openssl(*f"{sign} -out server.crt -extfile san.ext".split(), cwd=d)
    rsa = "req -x509 -newkey rsa:2048 -nodes -days 2 -keyout token.key -out token.crt"
    _openssl(*rsa.split(), "-subj", "/CN=lapis token signer", cwd=d)
    cert_dir = d / "certs.d"
    cert_dir.mkdir()
    shutil.copy(d / "ca.crt", cert_dir / "ca.crt")
    return Pki(
        d, d / "ca.crt", d / "server.crt", d / "server.key", d / "token.crt", d / "token.key",
        cert_dir,
    )  # fmt: skip


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash from libxcrypt (the ``crypt`` module warns it is deprecated)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # noqa: PLC0415  (deprecated in 3.11, still the only bcrypt here)

        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


# -- token server -----------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class TokenServer:
    """An HTTPS token service for the registry's bearer-token auth."""

    pki: Pki
    users: dict[str, str]
    requests: list[dict[str, Any]] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def realm(self) -> str:
        return f"https://{SIDE_ADDR}:{PORTS['token_server']}/token"

    def issue(self, account: str, scopes: list[str]) -> str:
        key = serialization.load_pem_private_key(self.pki.token_key.read_bytes(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        cert = self.pki.token_cert.read_text()
        der = ssl.PEM_cert_to_DER_cert(cert)
        access = []
        for scope in scopes:
            kind, _sep, rest = scope.partition(":")
            name, _sep2, actions = rest.rpartition(":")
            if account:
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        claims = {
            "iss": ISSUER,
            "sub": account,
            "aud": SERVICE,
            "exp": now + 600,
            "nbf": now - 30,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    def start(self) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                account = ""
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    user, _sep, pw = base64.b64decode(auth[6:]).decode().partition(":")
                    if owner.users.get(user) != pw:
                        owner.requests.append({"denied": user})
                        self.send_response(401)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    account = user
                scopes = query.get("scope", [])
                owner.requests.append({"account": account, "scopes": scopes})
                body = json.dumps({"token": owner.issue(account, scopes), "expires_in": 600})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

        server = http.server.ThreadingHTTPServer((SIDE_ADDR, PORTS["token_server"]), Handler)
        server.socket = self.pki.ssl_server_context().wrap_socket(server.socket, server_side=True)
        self.server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


# -- registry -------------------------------------------------------------------------------


@dataclass
class Registry:
    """A running docker-registry."""

    host: str  # address:port as clients name it
    storage: Path
    log: Path
    pki: Pki | None
    proc: subprocess.Popen[bytes]
    creds: str = ""  # user:password for skopeo, empty when anonymous

    def blob_data(self, digest: str) -> Path:
        hexdigest = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def blob_gets(self, repository: str) -> int:
        """How many blob GETs for ``repository`` the registry's access log shows."""
        needle = f'"GET /v2/{repository}/blobs/sha256:'
        return sum(1 for line in self.log.read_text().splitlines() if needle in line)

    def access_lines(self, needle: str) -> list[str]:
        return [ln for ln in self.log.read_text().splitlines() if needle in ln and "HTTP/1.1" in ln]

    def tls_args(self, side: str = "") -> list[str]:
        """skopeo options for this registry as ``src`` or ``dest`` (``""``: inspect)."""
        pre = f"--{side}-" if side else "--"
        args = [f"{pre}cert-dir={self.pki.cert_dir}"] if self.pki else [f"{pre}tls-verify=false"]
        return args + ([f"{pre}creds={self.creds}"] if self.creds else [])


def _wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _attempt in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"docker-registry did not listen on {host}:{port}")


def start_registry(
    base: Path, port: int, pki: Pki | None, auth: dict[str, Any] | None, creds: str = ""
) -> Registry:
    base.mkdir(parents=True, exist_ok=True)
    storage = base / "storage"
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
        "http": {"addr": f"{REGISTRY_ADDR}:{port}", "secret": secrets.token_hex(16)},
    }
    if pki is not None:
        config["http"]["tls"] = {"certificate": str(pki.cert), "key": str(pki.key)}
    if auth:
        config["auth"] = auth
    (base / "config.yml").write_text(json.dumps(config))  # JSON is YAML
    log = base / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["/usr/bin/docker-registry", "serve", str(base / "config.yml")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    _wait_listening(REGISTRY_ADDR, port, proc, log)
    return Registry(f"{REGISTRY_ADDR}:{port}", storage, log, pki, proc, creds)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Registry]:
    base = tmp_path_factory.mktemp("registry-basic")
    (base / "htpasswd").write_text(f"{USER}:{bcrypt_hash(PASSWORD)}\n")
    auth = {"htpasswd": {"realm": "lapis-test", "path": str(base / "htpasswd")}}
    registry = start_registry(base, PORTS["basic"], pki, auth, f"{USER}:{PASSWORD}")
    try:
        yield registry
    finally:
        stop_process(registry.proc)


@pytest.fixture(scope="module")
def token_server(pki: Pki) -> Iterator[TokenServer]:
    server = TokenServer(pki, {USER: PASSWORD})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, token_server: TokenServer
) -> Iterator[Registry]:
    base = tmp_path_factory.mktemp("registry-token")
    auth = {
        "token": {
            "realm": token_server.realm,
            "service": SERVICE,
            "issuer": ISSUER,
            "rootcertbundle": str(pki.token_cert),
        }
    }
    registry = start_registry(base, PORTS["token"], pki, auth, f"{USER}:{PASSWORD}")
    try:
        yield registry
    finally:
        stop_process(registry.proc)


@pytest.fixture(scope="module")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Anonymous, plain HTTP (for insecure_registries)."""
    registry = start_registry(tmp_path_factory.mktemp("registry-plain"), PORTS["plain"], None, None)
    try:
        yield registry
    finally:
        stop_process(registry.proc)


# -- a TCP proxy that breaks one transfer ----------------------------------------------------------


class CuttingProxy:
    """Forwards ``SIDE_ADDR:port`` to a registry; cuts the first connection that has
    sent more than ``cut_after`` bytes to the client. Counts bytes sent to clients."""

    def __init__(self, upstream: tuple[str, int], port: int, cut_after: int) -> None:
        self.upstream = upstream
        self.cut_after = cut_after
        self.cuts = 0
        self.bytes_down = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server((SIDE_ADDR, port), reuse_port=False)
        self.listener.settimeout(0.2)
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.sockets: list[socket.socket] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self.threads.append(accept)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _address = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            self.sockets += [client, upstream]
            state = {"down": 0}
            for src, dst, down in ((client, upstream, False), (upstream, client, True)):
                thread = threading.Thread(
                    target=self._pump, args=(src, dst, down, state, (client, upstream)), daemon=True
                )
                thread.start()
                self.threads.append(thread)

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        down: bool,
        state: dict[str, int],
        pair: tuple[socket.socket, socket.socket],
    ) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if down:
                    with self.lock:
                        if self.cuts == 0 and state["down"] + len(data) > self.cut_after:
                            self.cuts += 1
                            keep = self.cut_after - state["down"]
                            dst.sendall(data[:keep])
                            self.bytes_down += keep
                            break
                        state["down"] += len(data)
                        self.bytes_down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self.threads:
            thread.join(timeout=5)


@pytest.fixture
def cutting_proxy(basic_registry: Registry) -> Iterator[Callable[[int], CuttingProxy]]:
    made: list[CuttingProxy] = []

    def make(cut_after: int) -> CuttingProxy:
        proxy = CuttingProxy((REGISTRY_ADDR, PORTS["basic"]), PORTS["proxy"], cut_after)
        made.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in made:
            proxy.close()


# -- images -------------------------------------------------------------------------------------


def _tar(files: dict[str, bytes | str]) -> bytes:
    """A layer tar: ``name -> content`` (bytes: a file; ``->target`` str: a symlink)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(n).parent) for n in files if str(Path(n).parent) != "."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if isinstance(content, str):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, content, 0o777
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o755
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _put_blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest[7:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def make_image(
    layout: Path,
    tag: str,
    layers: list[dict[str, bytes | str]],
    *,
    arch: str = "amd64",
    compress: bool = True,
    variant: str = "",
) -> dict[str, Any]:
    """Write a single-platform image into an OCI layout; returns its manifest descriptor."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    layer_descs, diff_ids = [], []
    for files in layers:
        tar = _tar(files)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        data = gzip.compress(tar, compresslevel=1, mtime=0) if compress else tar
        layer_descs.append(
            {"mediaType": LAYER_GZIP if compress else LAYER_TAR, **_put_blob(layout, data)}
        )
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    if variant:
        config["variant"] = variant
    config_desc = {"mediaType": OCI_CONFIG, **_put_blob(layout, json.dumps(config).encode())}
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc,
        "layers": layer_descs,
    }
    desc = {"mediaType": OCI_MANIFEST, **_put_blob(layout, json.dumps(manifest).encode())}
    platform = {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}
    _add_to_index(layout, {**desc, "platform": platform}, tag)
    return desc


def make_index(layout: Path, tag: str, manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """Write an image index over ``manifests`` (descriptors with platforms) and tag it."""
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    desc = {"mediaType": OCI_INDEX, **_put_blob(layout, json.dumps(index).encode())}
    _add_to_index(layout, desc, tag)
    return desc


def _add_to_index(layout: Path, desc: dict[str, Any], tag: str) -> None:
    path = layout / "index.json"
    empty: dict[str, Any] = {"schemaVersion": 2, "manifests": []}
    index: dict[str, Any] = json.loads(path.read_text()) if path.exists() else empty
    ref = "org.opencontainers.image.ref.name"
    index["manifests"] = [m for m in index["manifests"] if m.get("annotations", {}).get(ref) != tag]
    index["manifests"].append({**desc, "annotations": {ref: tag}})
    path.write_text(json.dumps(index))


def busybox_layers(extra: bytes = b"") -> list[dict[str, bytes | str]]:
    """Two layers: busybox-static with a few applet links, then a small file layer."""
    base: dict[str, bytes | str] = {"bin/busybox": BUSYBOX.read_bytes()}
    for applet in ("sh", "ls", "cat", "echo"):
        base[f"bin/{applet}"] = "busybox"
    return [base, {"etc/motd": b"lapis registry test\n" + extra}]


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["skopeo", "--insecure-policy", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {proc.stderr}")
    return proc


def skopeo_push(layout: Path, tag: str, registry: Registry, repo: str, *extra: str) -> None:
    skopeo(
        "copy",
        *extra,
        *registry.tls_args("dest"),
        f"oci:{layout}:{tag}",
        f"docker://{registry.host}/{repo}:{tag}",
    )


def tree_snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256 (to prove a destination unchanged)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def store_content(root: Path) -> dict[str, str]:
    """An image store's files and their hashes, lock files aside (they are not content)."""
    return {k: v for k, v in tree_snapshot(root).items() if not k.startswith("locks/")}


def store_options(registry: Registry, **kw: Any) -> RegistryOptions:
    """Client options with the test user, the registry's CA and a short retry pause."""
    ca = str(registry.pki.ca) if registry.pki else None
    return RegistryOptions(username=USER, password=PASSWORD, ca_path=ca, backoff=0.05, **kw)


@pytest.fixture(autouse=True)
def isolated_auth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the user's own auth files out of the tests."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
