"""lapis.layers.image with source=registry, run the way a user runs it, and the store
pull underneath it: interrupted transfers, bad credentials, tampering, platforms."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.oci_store import LayerMismatch, Store
from ansible_collections.lapis.layers.plugins.module_utils.registry_store import (
    pull_to_store,
    push_from_store,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_transport import (
    NetworkFailure,
)
from ansible_collections.lapis.layers.tests.system.conftest import RunModule
from ansible_collections.lapis.layers.tests.system.registry.conftest import (
    PASSWORD,
    PORTS,
    SIDE_ADDR,
    USER,
    Registry,
    busybox_layers,
    make_image,
    make_index,
    skopeo,
    skopeo_push,
    store_content,
    store_options,
)

PODMAN_RUN = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
PODMAN_RUN += ["--network", "none"]


def blob_json(layout: Path, digest: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((layout / "blobs/sha256" / digest[7:]).read_text())
    return data


def write_auth_file(path: Path, registry: Registry, password: str) -> Path:
    """A Docker-style auth file (``auths`` with base64 ``user:password``)."""
    token = base64.b64encode(f"{USER}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {registry.host: {"auth": token}}}))
    return path


def test_image_module_pulls_four_runs_like_skopeo_sees_it(
    basic_registry: Registry, run_module: RunModule, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    desc = make_image(src, "m", busybox_layers(extra=b"module pull"))
    skopeo_push(src, "m", basic_registry, "lapis/module-pull")
    store = Store(tmp_path / "store")
    name = f"{basic_registry.host}/lapis/module-pull:m"
    args: dict[str, object] = {"name": name, "store": str(store.root)}
    args |= {"ca_path": str(basic_registry.pki.ca) if basic_registry.pki else None}
    args |= {"auth_file": str(write_auth_file(tmp_path / "auth.json", basic_registry, PASSWORD))}

    check = run_module("lapis.layers.image", check=True, diff=True, **args)
    apply = run_module("lapis.layers.image", diff=True, **args)
    gets = basic_registry.blob_gets("lapis/module-pull")
    check2 = run_module("lapis.layers.image", check=True, diff=True, **args)
    apply2 = run_module("lapis.layers.image", diff=True, **args)
    always = run_module("lapis.layers.image", pull="always", **args)

    assert check["changed"] and apply["changed"], (check, apply)
    assert set(check["transfer"]["blobs"].values()) == {"fetch"}
    assert not check2["changed"] and not apply2["changed"] and not always["changed"]
    assert apply["manifest_digest"] == desc["digest"] == always["manifest_digest"]
    assert set(apply["transfer"]["blobs"].values()) == {"fetched"}
    assert len(apply["layers_unpacked"]) == 2
    # The second pull (and the re-resolving one) fetched no blob at all.
    assert basic_registry.blob_gets("lapis/module-pull") == gets
    # skopeo reads the store's layout and sees the registry's manifest and layers, unchanged.
    raw = skopeo("inspect", "--raw", f"oci:{store.oci_dir}:{name}").stdout
    remote = skopeo("inspect", "--raw", *basic_registry.tls_args(), f"docker://{name}").stdout
    assert raw == remote
    assert raw.encode() == (src / "blobs/sha256" / desc["digest"][7:]).read_bytes()


def test_image_module_wrong_password_fails_clearly_and_leaves_store_unchanged(
    basic_registry: Registry, run_module: RunModule, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_image(src, "w", busybox_layers(extra=b"wrong password"))
    skopeo_push(src, "w", basic_registry, "lapis/module-wrong")
    store = Store(tmp_path / "store")
    store.init()
    before = store_content(store.root)
    name = f"{basic_registry.host}/lapis/module-wrong:w"
    ca = str(basic_registry.pki.ca) if basic_registry.pki else None

    bad = run_module(
        "lapis.layers.image", name=name, store=str(store.root), ca_path=ca,
        username=USER, password="not-the-password",
    )  # fmt: skip

    assert bad["_ansible_rc"] != 0, bad
    assert bad["error_kind"] == "unauthorized"
    assert basic_registry.host in bad["msg"] and "lapis/module-wrong" in bad["msg"]
    assert "not-the-password" not in json.dumps(bad)
    assert store_content(store.root) == before


def test_image_module_picks_the_platform_from_an_index(
    basic_registry: Registry, run_module: RunModule, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    amd = make_image(src, "amd", busybox_layers(extra=b"amd64"), arch="amd64")
    arm = make_image(src, "arm", [{"etc/arch": b"arm64\n"}], arch="arm64", variant="v8")
    platforms = [
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
    ]
    entries = [{**d, "platform": p} for d, p in zip((amd, arm), platforms, strict=True)]
    index = make_index(src, "multi", entries)
    skopeo_push(src, "multi", basic_registry, "lapis/module-multi", "--all")
    name = f"{basic_registry.host}/lapis/module-multi:multi"
    args: dict[str, object] = {"name": name, "username": USER, "password": PASSWORD}
    args |= {"ca_path": str(basic_registry.pki.ca) if basic_registry.pki else None}

    arm_pull = run_module(
        "lapis.layers.image", platform="linux/arm64", store=str(tmp_path / "a"), **args
    )
    missing = run_module(
        "lapis.layers.image", platform="linux/s390x", store=str(tmp_path / "s"), **args
    )

    assert arm_pull["changed"] and arm_pull["manifest_digest"] == arm["digest"], arm_pull
    assert arm_pull["index_digest"] == index["digest"]
    assert arm_pull["platform"] == "linux/arm64"
    assert Store(tmp_path / "a").resolve(name).manifest_digest == arm["digest"]
    assert missing["_ansible_rc"] != 0 and missing["error_kind"] == "platform_not_found"
    assert "linux/s390x" in missing["msg"] and "linux/arm64/v8" in missing["msg"]
    assert not Store(tmp_path / "s").tags() if Store(tmp_path / "s").exists() else True


def test_interrupted_pull_completes_on_retry_with_a_correct_store(
    basic_registry: Registry, cutting_proxy, tmp_path: Path
) -> None:
    blob = os.urandom(3 << 20)
    src = tmp_path / "src"
    make_image(src, "big", [{"data/blob": blob}], compress=False)
    skopeo_push(src, "big", basic_registry, "lapis/store-big")
    name = f"{SIDE_ADDR}:{PORTS['proxy']}/lapis/store-big:big"
    store = Store(tmp_path / "store")
    store.init()
    before = store_content(store.root)
    proxy = cutting_proxy(1 << 20)

    # No retries: the cut connection fails the pull, and the store is as it was.
    with pytest.raises(NetworkFailure, match="lapis/store-big"):
        pull_to_store(store, name, store_options(basic_registry, retries=0))
    assert proxy.cuts == 1
    assert store_content(store.root) == before and not list(store.tmp_dir.iterdir())
    # Running the pull again completes it; every blob and the layer match the registry's.
    done = pull_to_store(store, name, store_options(basic_registry))

    assert done.changed and done.resumed == 0
    image = store.resolve(name)
    for digest in [image.config_digest, *(layer.digest for layer in image.layers)]:
        data = store.blob_path(digest).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest[7:]
        assert data == basic_registry.blob_data(digest).read_bytes()
    assert (store.lowerdir(image.layers[0].chain_id) / "data/blob").read_bytes() == blob


def test_interrupted_layer_resumes_within_one_pull_into_the_store(
    basic_registry: Registry, cutting_proxy, tmp_path: Path
) -> None:
    blob = os.urandom(3 << 20)
    src = tmp_path / "src"
    make_image(src, "big", [{"data/blob": blob}], compress=False)
    skopeo_push(src, "big", basic_registry, "lapis/store-resume")
    proxy = cutting_proxy(1 << 20)
    store = Store(tmp_path / "store")
    name = f"{SIDE_ADDR}:{PORTS['proxy']}/lapis/store-resume:big"

    done = pull_to_store(store, name, store_options(basic_registry))

    assert proxy.cuts == 1 and done.resumed == 1
    assert any('" 206 ' in line for line in basic_registry.access_lines("/lapis/store-resume/"))
    image = store.resolve(name)
    assert (store.lowerdir(image.layers[0].chain_id) / "data/blob").read_bytes() == blob


def test_layer_not_matching_its_diff_id_fails_before_the_tag(
    basic_registry: Registry, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    good = make_image(src, "d", busybox_layers(extra=b"diff id"))
    manifest = blob_json(src, good["digest"])
    config_desc = manifest["config"]
    assert isinstance(config_desc, dict)
    config = blob_json(src, config_desc["digest"])
    rootfs = config["rootfs"]
    assert isinstance(rootfs, dict)
    rootfs["diff_ids"][1] = "sha256:" + hashlib.sha256(b"some other layer").hexdigest()
    _rewrite(src, "d", manifest, config)
    skopeo_push(src, "d", basic_registry, "lapis/store-diffid")
    store = Store(tmp_path / "store")
    store.init()
    before = store_content(store.root)

    with pytest.raises(LayerMismatch, match="diff_id"):
        pull_to_store(
            store, f"{basic_registry.host}/lapis/store-diffid:d", store_options(basic_registry)
        )

    assert store_content(store.root) == before
    assert store.tags() == {}


def _rewrite(
    layout: Path, tag: str, manifest: dict[str, object], config: dict[str, object]
) -> None:
    """Store ``config`` and ``manifest`` (pointing at it) in ``layout`` and tag the manifest."""

    def put(data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (layout / "blobs/sha256" / digest[7:]).write_bytes(data)
        return digest, len(data)

    digest, size = put(json.dumps(config).encode())
    manifest["config"] = {**manifest["config"], "digest": digest, "size": size}  # type: ignore[dict-item]
    digest, size = put(json.dumps(manifest).encode())
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            entry.update(digest=digest, size=size)
    (layout / "index.json").write_text(json.dumps(index))


def test_docker_schema2_pull_is_stored_in_oci_form_and_stays_idempotent(
    basic_registry: Registry, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_image(src, "v2", busybox_layers(extra=b"docker schema2"))
    skopeo_push(src, "v2", basic_registry, "lapis/store-docker", "--format", "v2s2")
    name = f"{basic_registry.host}/lapis/store-docker:v2"
    remote = skopeo("inspect", "--raw", *basic_registry.tls_args(), f"docker://{name}").stdout
    remote_digest = "sha256:" + hashlib.sha256(remote.encode()).hexdigest()
    assert "vnd.docker.distribution.manifest.v2" in remote
    store = Store(tmp_path / "store")

    pulled = pull_to_store(store, name, store_options(basic_registry))
    always = pull_to_store(store, name, store_options(basic_registry), pull="always")
    pinned = pull_to_store(store, f"{name}@{remote_digest}", store_options(basic_registry))

    assert pulled.changed and pulled.source_digest == remote_digest != pulled.digest
    assert not always.changed and always.digest == pulled.digest
    assert pinned.changed and pinned.digest == pulled.digest  # a second tag, no new blobs
    assert not [v for v in pinned.blobs.values() if v != "present"]
    stored = json.loads(store.read_blob(pulled.digest))
    assert stored["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert [x["digest"] for x in stored["layers"]] == [
        x["digest"] for x in json.loads(remote)["layers"]
    ]


@pytest.fixture
def podman() -> Iterator[list[str]]:
    """podman with private storage (vfs; its runroot path must be short), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="lapis-pm-", dir="/tmp"))
    cmd = ["podman", "--root", str(root / "root"), "--runroot", str(root / "run")]
    cmd += ["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
    try:
        yield cmd
    finally:
        subprocess.run([*cmd, "rm", "-af"], capture_output=True, check=False)
        subprocess.run([*cmd, "system", "reset", "-f"], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_image_pushed_from_the_store_is_pulled_by_skopeo_and_runs_under_podman(
    basic_registry: Registry, tmp_path: Path, podman: list[str]
) -> None:
    src = tmp_path / "src"
    make_image(src, "p", busybox_layers(extra=b"podman ran me"))
    skopeo_push(src, "p", basic_registry, "lapis/podman-src")
    store = Store(tmp_path / "store")
    options = store_options(basic_registry)
    pull_to_store(store, f"{basic_registry.host}/lapis/podman-src:p", options)
    dest = f"{basic_registry.host}/lapis/podman-dest:p"
    push_from_store(store, f"{basic_registry.host}/lapis/podman-src:p", options, dest=dest)

    storage = f"containers-storage:[vfs@{podman[2]}+{podman[4]}]localhost/lapis-pushed:p"
    skopeo("copy", *basic_registry.tls_args("src"), f"docker://{dest}", storage)
    proc = subprocess.run(
        [*podman, "run", "--rm", *PODMAN_RUN, "localhost/lapis-pushed:p", "/bin/cat", "/etc/motd"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "lapis registry test\npodman ran me"
