"""The image store against real peers: buildah-built images, skopeo, umoci, kernel overlay."""

from __future__ import annotations

import functools
import gzip
import io
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import tarfile
from pathlib import Path

import pytest
from jsonschema import Draft4Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from ansible_collections.lapis.layers.plugins.module_utils.image_import import (
    ImportResult,
    SourceError,
    blobs_in_store_source,
    import_image,
    open_source,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import sha256_digest
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store, StoreError
from ansible_collections.lapis.layers.plugins.module_utils.oci_unpack import (
    apply_unpack,
    plan_unpack,
)
from ansible_collections.lapis.layers.tests.conftest import shared_dir
from ansible_collections.lapis.layers.tests.system.store.conftest import snapshot, store_files

pytestmark = pytest.mark.root

IMG = "lapis.layers.image"
UNPACK = "lapis.layers.image_unpack"
INFO = "lapis.layers.image_info"


def _failed(result) -> bool:
    return result["_ansible_rc"] != 0 or bool(result.get("failed"))


def _ok(result):
    assert not _failed(result), result.get("msg")
    return result


def engine_import(store: Path, name: str, kind: str, path: Path, **kw) -> ImportResult:
    """The module's engine in this process (the module adds only argument handling)."""
    source = open_source(kind, str(path), kw.pop("source_ref", None))
    try:
        return import_image(Store(store), name, source, **kw)
    finally:
        source.close()


def engine_unpack(store: Path, name: str, dest: Path | None, fmt: str = "flat") -> list[str]:
    plan = plan_unpack(Store(store), name, fmt, str(dest) if dest else None)
    return apply_unpack(Store(store), plan)


def _layout_digest(layout: Path) -> str:
    return json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]


def _oci_validators(shared: Path):
    root = shared / "conformance" / "oci-image-spec"
    aliases = json.loads((root / "schema-aliases.json").read_text())
    aliases.pop("note")
    registry = Registry().with_resources(
        (uri, Resource.from_contents(json.loads((root / "schema" / name).read_text()),
                                     default_specification=DRAFT4))
        for name, uris in aliases.items() for uri in uris
    ).crawl()  # fmt: skip

    def validator(schema_file: str) -> Draft4Validator:
        schema = json.loads((root / "schema" / schema_file).read_text())
        return Draft4Validator(schema, registry=registry)

    return validator


def test_module_import_is_idempotent_and_readable_by_skopeo(images, run_module, tmp_path):
    store = tmp_path / "store"
    args = {"name": "localhost/top:1", "source": "oci-archive",
            "path": str(images["top"]["oci-archive"]), "store": str(store)}  # fmt: skip

    checked = _ok(run_module(IMG, check=True, diff=True, **args))
    assert not store.exists()  # check mode writes nothing, not even the store
    first = _ok(run_module(IMG, diff=True, **args))
    again_checked = _ok(run_module(IMG, check=True, **args))
    again = _ok(run_module(IMG, diff=True, **args))

    assert checked["changed"] and first["changed"]
    assert not again_checked["changed"] and not again["changed"]
    digest = first["manifest_digest"]
    assert checked["manifest_digest"] == digest == again["manifest_digest"]
    assert digest == _layout_digest(images["top"]["oci"])
    # (the diff itself is consumed by the callback here; the integration target asserts it)
    assert first["previous_digest"] is None and again["previous_digest"] == digest
    assert len(first["layers_unpacked"]) == 2 and again["layers_unpacked"] == []
    _check_store_layout(store, "localhost/top:1", digest)

    # Moving the tag to another image collects what only the old image used.
    top = Store(store).resolve("localhost/top:1")
    moved = _ok(run_module(IMG, name="localhost/top:1", source="oci",
                           path=str(images["other"]["oci"]), store=str(store)))  # fmt: skip
    assert moved["changed"] and moved["previous_digest"] == digest
    assert moved["removed_layers"] == [top.chain_ids[1]]
    assert digest in moved["removed_blobs"] and top.layers[0].digest not in moved["removed_blobs"]
    assert Store(store).present_layers() == set(Store(store).resolve("localhost/top:1").chain_ids)


def _check_store_layout(store: Path, reference: str, digest: str) -> None:
    """skopeo reads the store by full reference; documents validate against the schemas
    (when ../shared with the image-spec schemas is there)."""
    inspect = subprocess.run(["skopeo", "inspect", f"oci:{store}/oci:{reference}"],
                             capture_output=True, text=True, check=True)  # fmt: skip
    assert json.loads(inspect.stdout)["Digest"] == digest
    shared = shared_dir()
    if shared is None:
        return
    validator = _oci_validators(shared)
    index = json.loads((store / "oci" / "index.json").read_text())
    assert not list(validator("image-index-schema.json").iter_errors(index))
    manifest = json.loads((store / "oci/blobs/sha256" / digest.split(":")[1]).read_text())
    assert not list(validator("image-manifest-schema.json").iter_errors(manifest))
    config_digest = manifest["config"]["digest"].split(":")[1]
    config = json.loads((store / "oci/blobs/sha256" / config_digest).read_text())
    assert not list(validator("config-schema.json").iter_errors(config))
    layout = json.loads((store / "oci" / "oci-layout").read_text())
    assert not list(validator("image-layout-schema.json").iter_errors(layout))


@pytest.mark.parametrize("kind", ["oci", "docker-archive", "oci-zstd"])
def test_flat_unpack_equals_umoci(kind, images, tmp_path, umoci_unpack):
    store = tmp_path / "store"
    source = "oci" if kind == "oci-zstd" else kind
    result = engine_import(store, "top", source, images["top"][kind])
    assert result.changed
    assert not engine_import(store, "top", source, images["top"][kind]).changed
    _check_store_layout(store, "docker.io/library/top:latest", result.manifest_digest)
    dest = tmp_path / "flat"
    engine_unpack(store, "top", dest)

    # umoci unpacks the same image from the exported layout (gzip) and, for the
    # docker-archive, from our store's own layout -- which also shows umoci reads the store.
    if kind == "docker-archive":
        expected = umoci_unpack(store / "oci", "docker.io/library/top:latest")
    else:
        expected = umoci_unpack(images["top"]["oci"], "top")
    ours, theirs = snapshot(dest), snapshot(expected)
    assert ours == theirs
    assert "etc/file" not in ours and "etc/dir" not in ours
    assert "opq/a" not in ours and "opq/b" in ours
    assert ours["usr/bin/suid"][1] == "0o4755"
    assert ours["home/user/secret"][2:4] == (1000, 1000)
    assert ours["etc/abs"][-1] == "/etc/file"
    assert (dest / "bin/ls").stat().st_ino == (dest / "bin/busybox").stat().st_ino


def test_module_unpack_flat_is_idempotent(images, run_module, tmp_path):
    store = tmp_path / "store"
    engine_import(store, "top", "oci", images["top"]["oci"])
    dest = tmp_path / "flat"
    args = {"image": "top", "dest": str(dest), "store": str(store)}
    checked = _ok(run_module(UNPACK, check=True, **args))
    assert checked["changed"] and not dest.exists()
    assert _ok(run_module(UNPACK, **args))["changed"]
    assert not _ok(run_module(UNPACK, **args))["changed"]
    assert (dest / "opq/b").read_text() == "b\n"


def test_layers_format_stacks_in_kernel_overlay(images, tmp_path, overlay_mounts):
    store = tmp_path / "store"
    # A stray directory where a layer goes (not made by the store) is replaced, not trusted.
    engine_import(store, "other", "oci", images["other"]["oci"])
    base_chain = Store(store).resolve("other").chain_ids[0]
    Store(store).remove("other")
    stray = store / "layers" / base_chain.split(":")[1]
    (stray / "diff" / "junk").mkdir(parents=True)
    engine_import(store, "top", "oci", images["top"]["oci"])
    assert not (stray / "diff" / "junk").exists()
    lowerdirs = engine_unpack(store, "top", None, "layers")
    image = Store(store).resolve("top")
    assert lowerdirs == [str(store / "layers" / c.split(":")[1] / "diff")
                         for c in reversed(image.chain_ids)]  # fmt: skip
    top_layer = Path(lowerdirs[0])
    assert (top_layer / "etc/file").lstat().st_rdev == 0  # whiteout: 0/0 character device
    assert (top_layer / "etc/dir").is_char_device()
    assert os.getxattr(top_layer / "opq", "trusted.overlay.opaque") == b"y"

    merged = tmp_path / "merged"
    merged.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"ro,lowerdir={':'.join(lowerdirs)}", str(merged)], check=True)  # fmt: skip
    overlay_mounts.append(merged)
    flat = tmp_path / "flat"
    engine_unpack(store, "top", flat)
    assert snapshot(merged) == snapshot(flat)


def test_bundle_runs_under_runc(images, run_module, tmp_path):
    store = tmp_path / "store"
    engine_import(store, "top", "docker-archive", images["top"]["docker-archive"])
    bundle = tmp_path / "bundle"
    result = _ok(run_module(UNPACK, image="top", dest=str(bundle), format="bundle",
                            store=str(store)))  # fmt: skip
    assert result["changed"] and result["rootfs"] == str(bundle / "rootfs")
    config = json.loads((bundle / "config.json").read_text())
    assert config["root"]["path"] == "rootfs"
    assert config["process"]["args"] == ["/bin/sh", "-c", "echo hello from top"]
    assert config["process"]["cwd"] == "/opq"
    assert "GREETING=hi" in config["process"]["env"]

    shared = shared_dir()
    if shared is not None:  # the upstream schemas, beside the module's own embedded copy
        schema_dir = shared / "conformance" / "oci-runtime-spec" / "schema"
        base = "https://schemas.invalid/oci-runtime-spec/"
        registry = Registry().with_resources(
            (base + p.name, Resource.from_contents(json.loads(p.read_text()),
                                                   default_specification=DRAFT4))
            for p in schema_dir.glob("*.json")
        ).crawl()  # fmt: skip
        validator = Draft4Validator({"$ref": base + "config-schema.json"}, registry=registry)
        assert not list(validator.iter_errors(config))

    state = tmp_path / "runc-state"
    name = f"lapis-store-{tmp_path.name}"[-60:]
    try:
        proc = subprocess.run(["runc", "--root", str(state), "run", "-b", str(bundle), name],
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    finally:
        subprocess.run(["runc", "--root", str(state), "delete", "-f", name],
                       capture_output=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "hello from top"


def _bad_layout(images, tmp_path: Path, damage) -> Path:
    """A copy of ``top``'s OCI layout with its top layer damaged by ``damage(blob_path)``."""
    layout = tmp_path / "bad-oci"
    shutil.copytree(images["top"]["oci"], layout)
    manifest_digest = _layout_digest(layout)
    manifest = json.loads((layout / "blobs/sha256" / manifest_digest[7:]).read_text())
    damage(layout, manifest)
    return layout


def _truncate(layout, manifest):
    blob = layout / "blobs/sha256" / manifest["layers"][-1]["digest"][7:]
    blob.write_bytes(blob.read_bytes()[:-100])


def _flip(layout, manifest):
    blob = layout / "blobs/sha256" / manifest["layers"][-1]["digest"][7:]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))


def _rewrite(layout: Path, manifest: dict, config: dict) -> None:
    """Store ``config`` and a manifest pointing at it, with correct digests, as the image."""
    blobs = layout / "blobs/sha256"
    config_bytes = json.dumps(config).encode()
    (blobs / sha256_digest(config_bytes)[7:]).write_bytes(config_bytes)
    manifest["config"].update(digest=sha256_digest(config_bytes), size=len(config_bytes))
    manifest_bytes = json.dumps(manifest).encode()
    (blobs / sha256_digest(manifest_bytes)[7:]).write_bytes(manifest_bytes)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0].update(digest=sha256_digest(manifest_bytes), size=len(manifest_bytes))
    (layout / "index.json").write_text(json.dumps(index))


def _wrong_diff_id(layout, manifest):
    blobs = layout / "blobs/sha256"
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_text())
    config["rootfs"]["diff_ids"][-1] = "sha256:" + "0" * 64
    _rewrite(layout, manifest, config)


def _swapped_layers(layout, manifest):
    """The two layers listed the other way round: each blob fails its diff_id."""
    blobs = layout / "blobs/sha256"
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_text())
    manifest["layers"].reverse()
    _rewrite(layout, manifest, config)


def _hostile_layer(layout, manifest):
    """A well-formed top layer (right digest and diff_id) whose third member escapes."""
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tar:
        for name, data in (("good/one", b"1" * 300_000), ("good/two", b"2"),
                           ("good/../../escape", b"evil")):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    blob = gzip.compress(plain.getvalue())
    blobs = layout / "blobs/sha256"
    (blobs / sha256_digest(blob)[7:]).write_bytes(blob)
    manifest["layers"][-1].update(digest=sha256_digest(blob), size=len(blob))
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_text())
    config["rootfs"]["diff_ids"][-1] = sha256_digest(plain.getvalue())
    _rewrite(layout, manifest, config)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_truncate, "truncated"),
        (_flip, "corrupted"),
        (_wrong_diff_id, "diff_id"),
        (_swapped_layers, "diff_id"),
        (_hostile_layer, r"layer member 'good/\.\./\.\./escape': path escapes the root"),
    ],
    ids=["truncated", "corrupted", "wrong-diff-id", "swapped-layers", "escaping-member"],
)
def test_bad_image_fails_clearly_and_leaves_store_unchanged(damage, message, images, tmp_path):
    store = tmp_path / "store"
    engine_import(store, "other", "oci", images["other"]["oci"])
    before = store_files(store)
    index_before = (store / "oci/index.json").read_bytes()
    layout = _bad_layout(images, tmp_path, damage)

    with pytest.raises(StoreError, match=message) as failure:
        engine_import(store, "top", "oci", layout)

    assert "image docker.io/library/top:latest" in str(failure.value) or "blob" in str(
        failure.value
    )
    assert store_files(store) == before
    assert (store / "oci/index.json").read_bytes() == index_before
    assert list((store / "tmp").iterdir()) == []
    assert not [p for p in tmp_path.rglob("escape") if p.read_bytes() == b"evil"]


def test_module_reports_a_corrupted_blob(images, run_module, tmp_path):
    store = tmp_path / "store"
    layout = _bad_layout(images, tmp_path, _flip)
    result = run_module(IMG, name="top", source="oci", path=str(layout), store=str(store))
    assert _failed(result)
    assert result["msg"].startswith("image top: blob sha256:")
    assert "is corrupted: its content has digest sha256:" in result["msg"]
    assert Store(store).tags() == {}


def _import_in_child(store: Path, path: Path, results) -> None:
    result = engine_import(store, "top", "oci-archive", path)
    results.put((result.changed, result.layers_unpacked, result.blobs_added))


def test_two_imports_at_once_end_with_one_correct_store(images, tmp_path):
    """Two processes (as two playbooks would be) import the same image at the same time."""
    store = tmp_path / "store"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_import_in_child,
                         args=(store, images["top"]["oci-archive"], queue))
             for _child in range(2)]  # fmt: skip
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(300)
        assert proc.exitcode == 0
    results = [queue.get(timeout=5) for _proc in procs]
    assert any(result[0] for result in results)
    # Each layer was unpacked by exactly one run, each blob written by exactly one run.
    unpacked = results[0][1] + results[1][1]
    assert sorted(unpacked) == sorted(Store(store).resolve("top").chain_ids)
    added = results[0][2] + results[1][2]
    assert len(added) == len(set(added)) == len(Store(store).present_blobs())
    assert len(Store(store).tags()) == 1
    assert len(list((store / "layers").iterdir())) == 2
    assert list((store / "tmp").iterdir()) == []
    assert not engine_import(store, "top", "oci-archive", images["top"]["oci-archive"]).changed


def _unpack_flat_in_child(store: Path, dest: Path, planned, results) -> None:
    plan = plan_unpack(Store(store), "top", "flat", str(dest))
    planned.wait(60)  # both runs have decided to write dest before either acts
    apply_unpack(Store(store), plan)
    results.put(plan.dest_changes)


def test_two_flat_unpacks_at_once_write_dest_once(images, tmp_path):
    """Two processes unpack the same image to the same dest: one writes it, one waits."""
    store = tmp_path / "store"
    engine_import(store, "top", "oci", images["top"]["oci"])
    dest = tmp_path / "out" / "flat"
    ctx = multiprocessing.get_context("fork")
    planned, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_unpack_flat_in_child, args=(store, dest, planned, queue))
             for _child in range(2)]  # fmt: skip
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(300)
        assert proc.exitcode == 0
    assert sorted(queue.get(timeout=5) for _proc in procs) == [False, True]
    engine_unpack(store, "top", tmp_path / "reference")
    assert snapshot(dest) == snapshot(tmp_path / "reference")
    assert sorted(p.name for p in dest.parent.iterdir()) == [
        ".flat.lapis-image.json", ".flat.lapis-lock", "flat"]  # fmt: skip


def _killed_after(module, name: str, action) -> None:
    """In a child: run ``action``; SIGKILL this process right after ``module.name`` returns."""
    real = getattr(module, name)

    def then_die(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(module, name, then_die)
    action()


def test_import_killed_mid_layer_leaves_no_half_state(images, tmp_path):
    """SIGKILL after a layer is fully extracted, before its rename: nothing half is visible."""
    from ansible_collections.lapis.layers.plugins.module_utils import layer_tar  # noqa: PLC0415

    store = tmp_path / "store"
    ctx = multiprocessing.get_context("fork")
    action = functools.partial(engine_import, store, "top", "oci", images["top"]["oci"])
    child = ctx.Process(target=_killed_after, args=(layer_tar, "extract_layer", action))
    child.start()
    child.join(300)
    assert child.exitcode == -signal.SIGKILL
    assert Store(store).tags() == {}
    assert Store(store).present_layers() == set()
    assert list((store / "tmp").iterdir()) != []  # the killed run's work, not yet collected

    again = engine_import(store, "top", "oci", images["top"]["oci"])
    assert again.changed and again.layers_unpacked == Store(store).resolve("top").chain_ids
    Store(store).gc()
    assert list((store / "tmp").iterdir()) == []


def test_flat_unpack_killed_before_rename_leaves_dest_untouched(images, tmp_path):
    """SIGKILL after the tree is built beside dest: dest keeps the old content, the next run
    removes the leftover and writes dest."""
    from ansible_collections.lapis.layers.plugins.module_utils import oci_unpack  # noqa: PLC0415

    store = tmp_path / "store"
    engine_import(store, "top", "oci", images["top"]["oci"])
    engine_import(store, "other", "oci", images["other"]["oci"])
    dest = tmp_path / "out" / "flat"
    engine_unpack(store, "other", dest)
    before = snapshot(dest)
    ctx = multiprocessing.get_context("fork")
    action = functools.partial(engine_unpack, store, "top", dest)
    child = ctx.Process(target=_killed_after, args=(oci_unpack, "_flatten", action))
    child.start()
    child.join(300)
    assert child.exitcode == -signal.SIGKILL
    assert snapshot(dest) == before
    assert oci_unpack.read_marker(dest)["image"] == "docker.io/library/other:latest"
    assert any(p.name.startswith(".flat.lapis-tmp-") for p in dest.parent.iterdir())

    engine_unpack(store, "top", dest)
    assert (dest / "opq/b").read_text() == "b\n"
    assert sorted(p.name for p in dest.parent.iterdir()) == [
        ".flat.lapis-image.json", ".flat.lapis-lock", "flat"]  # fmt: skip


def test_shared_base_layers_and_absent_gc(images, run_module, tmp_path):
    store = tmp_path / "store"
    for name in ("top", "other"):
        engine_import(store, name, "oci", images[name]["oci"])
    top, other = Store(store).resolve("top"), Store(store).resolve("other")
    assert top.chain_ids[0] == other.chain_ids[0]
    assert len(list((store / "layers").iterdir())) == 3

    info = _ok(run_module(INFO, store=str(store), name=["top", "docker.io/library/oth*"]))
    assert [i["reference"] for i in info["images"]] == [
        "docker.io/library/other:latest", "docker.io/library/top:latest"]  # fmt: skip
    top_info = info["images"][1:]
    assert len(top_info) == 1
    assert top_info[0]["config"]["Cmd"] == ["/bin/sh", "-c", "echo hello from top"]
    assert top_info[0]["config"]["WorkingDir"] == "/opq"
    assert top_info[0]["config"]["Labels"]["org.example.role"] == "test"
    assert "8080/tcp" in top_info[0]["config"]["ExposedPorts"]
    assert [x["unpacked"] for x in top_info[0]["layers"]] == [True, True]

    # A container's claim keeps top's layers through the removal of its tag.
    Store(store).register_container("web", top.chain_ids)
    checked = _ok(run_module(IMG, check=True, diff=True, name="top", state="absent",
                             store=str(store)))  # fmt: skip
    assert checked["changed"] and checked["previous_digest"] == top.manifest_digest
    assert Store(store).lookup("top") is not None
    removed = _ok(run_module(IMG, name="top", state="absent", store=str(store)))
    assert removed["changed"] and removed["removed_layers"] == []
    assert top.layers[1].digest in removed["removed_blobs"]
    assert Store(store).present_layers() == set(top.chain_ids) | set(other.chain_ids)

    Store(store).release_container("web")
    _ok(run_module(IMG, name="other", state="absent", store=str(store)))
    # The removal of other collected top's unclaimed layer too; nothing is left.
    assert list((store / "layers").iterdir()) == []
    assert list((store / "oci/blobs/sha256").iterdir()) == []
    assert json.loads((store / "oci/index.json").read_text())["manifests"] == []


def test_conformance_archives_flatten_as_expected(tmp_path, shared):
    corpus = shared / "conformance" / "layer-tars"
    expected = json.loads((corpus / "expected.json").read_text())["archives"]
    store = tmp_path / "store"
    for archive, data in expected.items():
        for n, image in enumerate(data["images"]):
            name = f"conformance/{archive.removesuffix('.tar').replace('_', '-')}:{n}"
            engine_import(store, name, "docker-archive", corpus / archive, source_ref=f"@{n}")
            dest = tmp_path / f"flat-{archive}-{n}"
            engine_unpack(store, name, dest)
            got = {}
            for rel, entry in snapshot(dest).items():
                kind = {0o100000: "file", 0o040000: "dir", 0o120000: "symlink"}[entry[0]]
                got[rel] = {"type": kind}
                if kind != "symlink":
                    got[rel]["mode"] = entry[1][2:].rjust(4, "0")
                if kind == "symlink":
                    got[rel]["target"] = entry[4]
                if kind == "file":
                    got[rel]["content"] = (dest / rel).read_text()
            assert got == image["expectedRootfs"], (archive, n)


def test_module_errors_name_the_object(images, run_module, tmp_path):
    store = str(tmp_path / "store")
    bad_ref = run_module(IMG, name="Bad:Name!", source="oci", path="/nonexistent", store=store)
    assert _failed(bad_ref) and bad_ref["msg"].startswith("image Bad:Name!: invalid")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_text("mine")
    engine_import(Path(store), "other", "oci", images["other"]["oci"])
    refused = run_module(UNPACK, image="other", dest=str(busy), store=store)
    assert _failed(refused) and "set force=true" in refused["msg"]
    assert (busy / "keep").read_text() == "mine"


def test_engine_errors_name_the_object(images, tmp_path):
    store = tmp_path / "store"
    with pytest.raises(SourceError, match=r"OCI layout .*/nope is not a directory"):
        engine_import(store, "x", "oci", tmp_path / "nope")
    with pytest.raises(StoreError, match=r"image never-imported is not in store"):
        engine_unpack(store, "never-imported", tmp_path / "d")
    both = tmp_path / "both"
    shutil.copytree(images["top"]["oci"], both)
    subprocess.run(["skopeo", "copy", "-q", f"oci:{images['other']['oci']}:other",
                    f"oci:{both}:other"], check=True)  # fmt: skip
    with pytest.raises(SourceError, match=r"holds 2 images \(top, other\); set source_ref"):
        engine_import(store, "x", "oci", both)
    with pytest.raises(SourceError, match=r"has no image 'third' \(it holds: top, other\)"):
        engine_import(store, "x", "oci", both, source_ref="third")
    picked = engine_import(store, "x", "oci", both, source_ref="other")
    assert picked.manifest_digest == _layout_digest(images["other"]["oci"])


def _import_twice(store: Path, paths: list[Path]) -> None:
    for path in paths:
        engine_import(store, "top", "oci", path)


def test_garbage_collection_during_imports_never_breaks_them(images, tmp_path):
    """gc() in a loop (as concurrent state=absent runs would) while another process imports."""
    store = tmp_path / "store"
    Store(store).init()
    ctx = multiprocessing.get_context("fork")
    sources = [images["other"]["oci"], images["top"]["oci-zstd"]]
    importer = ctx.Process(target=_import_twice, args=(store, sources))
    importer.start()
    collections = 0
    while importer.is_alive():
        Store(store).gc()
        collections += 1
    importer.join()
    assert importer.exitcode == 0 and collections > 0
    image = Store(store).resolve("top")
    assert all(Store(store).has_blob(x.digest) for x in image.layers)
    Store(store).gc()  # other's own layer is unreferenced now that top names the zstd image
    assert Store(store).present_layers() == set(image.chain_ids)
    assert snapshot(Path(engine_unpack(store, "top", None, "layers")[0])) != {}


def test_missing_layer_is_repaired_and_force_replaces_a_corrupted_blob(images, tmp_path):
    store = tmp_path / "store"
    engine_import(store, "top", "oci", images["top"]["oci"])
    image = Store(store).resolve("top")

    # A layer directory removed behind the store's back: the next import puts it back.
    shutil.rmtree(store / "layers" / image.chain_ids[1].split(":")[1])
    repaired = engine_import(store, "top", "oci", images["top"]["oci"])
    assert repaired.changed and repaired.layers_unpacked == [image.chain_ids[1]]

    # A layer blob corrupted on disk: only force re-hashes blobs, and replaces it.
    blob = store / "oci/blobs/sha256" / image.layers[1].digest.split(":")[1]
    good = blob.read_bytes()
    blob.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    assert not engine_import(store, "top", "oci", images["top"]["oci"]).changed
    forced = engine_import(store, "top", "oci", images["top"]["oci"], force=True)
    assert forced.changed and forced.blobs_added == [image.layers[1].digest]
    assert blob.read_bytes() == good


def test_blobs_already_in_the_store_are_checked_before_the_tag(images, tmp_path):
    """What a pull or a fleet copy does: ingest blobs, then import from the store itself."""
    first = tmp_path / "first"
    engine_import(first, "top", "oci", images["top"]["oci"])
    image = Store(first).resolve("top")
    manifest = Store(first).read_blob(image.manifest_digest)
    second = Store(tmp_path / "second")
    for digest in [image.config_digest] + [x.digest for x in image.layers]:
        second.ingest_blob(Store(first).blob_path(digest), digest)

    # A config whose diff_id does not match the layer: refused, no tag, nothing unpacked.
    config = dict(image.config)
    config["rootfs"] = {"type": "layers", "diff_ids": [x.diff_id for x in image.layers[:1]]
                        + ["sha256:" + "2" * 64]}  # fmt: skip
    bad_config = json.dumps(config).encode()
    bad_manifest = dict(image.manifest)
    bad_manifest["config"] = {**image.manifest["config"], "digest": sha256_digest(bad_config),
                              "size": len(bad_config)}  # fmt: skip
    second.ingest_bytes(bad_config)
    bad = blobs_in_store_source(second, json.dumps(bad_manifest).encode())
    with pytest.raises(StoreError, match="diff_id"):
        import_image(second, "top", bad)
    assert second.tags() == {}
    assert second.present_layers() == set()

    result = import_image(second, "top", blobs_in_store_source(second, manifest))
    assert result.changed and result.blobs_added == [image.manifest_digest]
    assert result.layers_unpacked == image.chain_ids
    assert second.resolve("top").manifest_digest == image.manifest_digest


def test_docker_schema2_manifest_in_a_layout(images, tmp_path):
    """A Docker schema2 manifest is stored in OCI form, readable by skopeo, unpacked the same."""
    layout = tmp_path / "docker-v2"
    shutil.copytree(images["top"]["oci"], layout)
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs/sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    manifest["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json"
    manifest["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json"
    for layer in manifest["layers"]:
        layer["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    data = json.dumps(manifest).encode()
    (blobs / sha256_digest(data)[7:]).write_bytes(data)
    index["manifests"][0].update(mediaType=manifest["mediaType"], digest=sha256_digest(data),
                                 size=len(data))  # fmt: skip
    (layout / "index.json").write_text(json.dumps(index))

    store = tmp_path / "store"
    result = engine_import(store, "v2", "oci", layout)
    # Stored in OCI form (skopeo skips Docker manifests in a layout), same config and layers.
    assert result.source_digest == sha256_digest(data) != result.manifest_digest
    image = Store(store).resolve("v2")
    assert image.manifest_media_type == "application/vnd.oci.image.manifest.v1+json"
    assert image.config_digest == manifest["config"]["digest"]
    assert [x.digest for x in image.layers] == [x["digest"] for x in manifest["layers"]]
    assert not engine_import(store, "v2", "oci", layout).changed
    inspect = subprocess.run(["skopeo", "inspect", f"oci:{store}/oci:docker.io/library/v2:latest"],
                             capture_output=True, text=True, check=True)  # fmt: skip
    assert json.loads(inspect.stdout)["Digest"] == result.manifest_digest
    engine_import(store, "top", "oci", images["top"]["oci"])
    assert Store(store).resolve("top").chain_ids == image.chain_ids  # same layer directories
    engine_unpack(store, "v2", tmp_path / "v2")
    engine_unpack(store, "top", tmp_path / "top")
    assert snapshot(tmp_path / "v2") == snapshot(tmp_path / "top")
