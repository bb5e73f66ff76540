"""Builds checked against buildah, podman and skopeo, and the cache and reproducibility rules.

Each differential case builds the same Dockerfile with ``image_build``'s executor and with
``buildah bud --runtime runc`` (vfs storage under tmp_path, same busybox base) and compares
the root filesystems (read back from the layer *blobs* through a second store, whiteouts
applied) and the config fields. Cases buildah 1.28 cannot build (heredocs, ``--exclude``,
``--parents``) are compared with expected trees instead.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.build_executor import (
    BuildError,
    BuildRequest,
    BuildResult,
    build_image,
)
from ansible_collections.lapis.layers.plugins.module_utils.image_import import (
    import_image,
    open_source,
)
from ansible_collections.lapis.layers.plugins.module_utils.layer_writer import flatten_layers
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store
from ansible_collections.lapis.layers.tests.system.image_build.conftest import BASE, Tool
from ansible_collections.lapis.layers.tests.system.layers.tree_snapshot import snapshot

CONFIG_FIELDS = (
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "ExposedPorts",
    "Labels",
    "Volumes",
    "StopSignal",
)


def build(
    store: Path, context: Path, text: str, name: str = "localhost/out:1", **kwargs: Any
) -> BuildResult:
    request = BuildRequest(
        store=str(store), context=str(context), dockerfile_text=text, name=name, **kwargs
    )
    return build_image(request)


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def tree_of_layout(layout: Path, ref: str, work: Path) -> dict[str, Any]:
    """Import ``layout:ref`` into a fresh store (unpacking every blob) and flatten it."""
    store = Store(str(work / "store"))
    import_image(store, "localhost/check:1", open_source("oci", str(layout), ref))
    image = store.resolve("localhost/check:1")
    lowers = store.ensure_layers(image)
    flatten_layers(list(reversed(lowers)), str(work / "rootfs"))
    return snapshot(work / "rootfs")


def our_tree(store: Path, name: str, work: Path) -> dict[str, Any]:
    return tree_of_layout(store / "oci", name, work)


def our_config(store: Path, name: str) -> dict[str, Any]:
    config: dict[str, Any] = Store(str(store)).resolve(name).config["config"]
    return config


def buildah_base(buildah: Tool, layout: Path) -> None:
    image_id = buildah("pull", "-q", f"oci:{layout}:test").strip().splitlines()[-1]
    buildah("tag", image_id, BASE)


def buildah_build(buildah: Tool, context: Path, text: str, out: Path, *args: str) -> None:
    (context / "Dockerfile").write_text(text)
    buildah(
        "bud",
        "--runtime",
        "runc",
        "--isolation",
        "oci",
        "--pull-never",
        "-q",
        "--layers",
        "--format",
        "oci",
        "-t",
        "localhost/theirs:1",
        *args,
        str(context),
    )
    buildah("push", "localhost/theirs:1", f"oci:{out}:theirs")


def their_config(out: Path) -> dict[str, Any]:
    index = json.loads((out / "index.json").read_text())
    blobs = out / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    config: dict[str, Any] = json.loads((blobs / manifest["config"]["digest"][7:]).read_text())
    labels = config["config"].get("Labels") or {}
    labels.pop("io.buildah.version", None)
    return config["config"]


def _normal(value: object) -> object:
    return value if value not in ({}, [], "", None) else None


# Runtime artifacts buildah leaves in its layers and we do not (mount points of files it
# bind-mounts into RUN); they are not part of what the Dockerfile asked for.
BUILDAH_ARTIFACTS = ("etc/hosts", "etc/resolv.conf", "run", "run/.containerenv", "etc/hostname")


def compare_trees(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    for path in BUILDAH_ARTIFACTS:
        if path not in ours:
            theirs.pop(path, None)
    diffs = {
        p: (ours.get(p), theirs.get(p))
        for p in sorted(set(ours) | set(theirs))
        if ours.get(p) != theirs.get(p)
    }
    assert diffs == {}


CASES = {
    "copy-corners": (
        {"private/secret.txt": "s\n", "tree/a/b.txt": "b\n", "single.txt": "1\n"},
        "FROM " + BASE + "\n"
        "COPY private /private\n"
        "COPY single.txt /etc\n"
        "COPY --chown=app tree /home/app/tree\n"
        "COPY tree/a/b.txt tree/a/../a/b.txt /many/\n"
        "RUN busybox ln -s /etc/single.txt /s && rm -rf /home/app/tree/a\n"
        "COPY --chmod=0750 single.txt /tool\n",
    ),
    "config-copy-run": (
        {
            "a.txt": "hello\n",
            "dir/sub/b.txt": "b\n",
            "dir/c.txt": "c\n",
            "skip.log": "no\n",
            ".dockerignore": "*.log\n",
        },
        "FROM " + BASE + "\n"
        "ENV APP=/app PATH=/usr/local/bin:/bin:/usr/bin\n"
        "LABEL org.example.name=demo version=1\n"
        "WORKDIR $APP/work\n"
        "COPY a.txt ./\n"
        "COPY --chown=1000:100 dir /app/dir/\n"
        "COPY --chmod=0751 a.txt /usr/local/bin/tool\n"
        "COPY . /ctx/\n"
        "RUN echo built > /app/built.txt && rm -f /etc/group && mkdir -p /var/empty\n"
        "RUN rm -rf /app/dir/sub && mkdir /app/dir/sub && echo new > /app/dir/sub/n.txt\n"
        "RUN busybox ln -s /app/built.txt /app/link && busybox ln /app/built.txt /app/hard\n"
        "EXPOSE 8080 53/udp\nVOLUME /data\nUSER app\nSTOPSIGNAL SIGINT\n"
        'ENTRYPOINT ["/bin/sh", "-c"]\nCMD ["cat /app/built.txt"]\n',
    ),
    "multi-stage": (
        {"src.txt": "source\n"},
        "FROM " + BASE + " AS builder\n"
        "COPY src.txt /src/\n"
        "RUN mkdir -p /out && cat /src/src.txt /src/src.txt > /out/double.txt\n"
        "FROM " + BASE + " AS unused\nRUN exit 1\n"
        "FROM " + BASE + "\n"
        "COPY --from=builder /out/ /opt/\n"
        "COPY --from=builder --chown=app:users /src/src.txt /opt/src.txt\n"
        "RUN cat /opt/double.txt\n",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_as_buildah(
    case: str, store: Path, base_layout: Path, buildah: Tool, tmp_path: Path
) -> None:
    files, text = CASES[case]
    context = write_tree(tmp_path / "context", {**files, "Dockerfile": text})
    if (context / "private").is_dir():
        (context / "private").chmod(0o700)
        (context / "private" / "secret.txt").chmod(0o600)
    build(store, context, text)
    buildah_base(buildah, base_layout)
    out = tmp_path / "theirs-layout"
    buildah_build(buildah, context, text, out)
    compare_trees(
        our_tree(store, "localhost/out:1", tmp_path / "o"),
        tree_of_layout(out, "theirs", tmp_path / "t"),
    )
    ours, theirs = our_config(store, "localhost/out:1"), their_config(out)
    # buildah moves a replaced ENV variable to the end; Docker keeps its place (as we do)
    ours["Env"], theirs["Env"] = sorted(ours.get("Env") or []), sorted(theirs.get("Env") or [])
    for key in CONFIG_FIELDS:
        assert _normal(ours.get(key)) == _normal(theirs.get(key)), key


def test_heredocs_exclude_parents(store: Path, tmp_path: Path) -> None:
    """Newer syntax buildah 1.28 lacks, checked against the expected tree."""
    context = write_tree(
        tmp_path / "context", {"src/a/x.txt": "x", "src/a/y.log": "y", "src/b/z.txt": "z"}
    )
    text = (
        "FROM " + BASE + "\nARG WHO=world\n"
        "COPY <<EOF /greeting.txt\nhello $WHO\nEOF\n"
        "COPY <<'EOF' /raw.txt\nhello $WHO\nEOF\n"
        "RUN <<EOF\necho from heredoc > /run.txt\necho second >> /run.txt\nEOF\n"
        "RUN <<EOF\n#!/bin/sh\necho script > /script.txt\nEOF\n"
        "COPY --exclude=*.log src/a /filtered/\n"
        "COPY --parents src/a/x.txt src/b/z.txt /kept/\n"
    )
    build(store, context, text)
    tree = our_tree(store, "localhost/out:1", tmp_path / "o")
    rootfs = tmp_path / "o" / "rootfs"
    assert (rootfs / "greeting.txt").read_text() == "hello world\n"
    assert (rootfs / "raw.txt").read_text() == "hello $WHO\n"
    assert (rootfs / "run.txt").read_text() == "from heredoc\nsecond\n"
    assert (rootfs / "script.txt").read_text() == "script\n"
    assert "filtered/x.txt" in tree and "filtered/y.log" not in tree
    assert (rootfs / "kept/src/a/x.txt").read_text() == "x"
    assert (rootfs / "kept/src/b/z.txt").read_text() == "z"
    assert "dev/pipes" not in tree and "proc" in tree


def test_add_archive_and_workdir(store: Path, tmp_path: Path) -> None:
    context = tmp_path / "context"
    payload = write_tree(tmp_path / "payload", {"pkg/bin/run": "#!/bin/sh\n", "pkg/README": "r"})
    context.mkdir()
    for name in ("p.tar.gz", "p.tar.bz2", "p.tar.xz"):
        with tarfile.open(context / name, "w:" + name.rsplit(".", 1)[1]) as archive:  # type: ignore[call-overload]
            archive.add(payload / "pkg", arcname="pkg")
    text = (
        "FROM " + BASE + "\nADD p.tar.gz /gz/\nADD p.tar.bz2 /bz2/\nADD p.tar.xz /xz\n"
        "WORKDIR /created/by/workdir\nWORKDIR /etc\n"
    )
    result = build(store, context, text)
    rootfs = tmp_path / "o" / "rootfs"
    tree = our_tree(store, "localhost/out:1", tmp_path / "o")
    for top in ("gz", "bz2", "xz"):
        assert (rootfs / top / "pkg" / "README").read_text() == "r"
    assert tree["created/by/workdir"]["type"] == "dir"
    layers = [step["layer"] for step in result.steps]
    assert layers[-2] is not None and layers[-1] is None  # /etc exists: empty layer


def test_cache_and_changes(store: Path, tmp_path: Path) -> None:
    context = write_tree(tmp_path / "context", {"one.txt": "1", "two.txt": "2"})
    text = (
        "FROM " + BASE + "\nARG MODE=a\nCOPY one.txt /one\nRUN echo $MODE > /mode\n"
        "COPY two.txt /two\nRUN cat /one /two > /both\n"
    )
    first = build(store, context, text)
    assert first.changed and [s["status"] for s in first.steps].count("built") == 5
    again = build(store, context, text)
    assert not again.changed and again.digest == first.digest and again.output == []
    assert {s["status"] for s in again.steps} == {"cached"}
    (context / "two.txt").touch()  # mtime alone: still cached
    assert build(store, context, text).digest == first.digest
    (context / "two.txt").write_text("22")
    changed = build(store, context, text)
    assert [s["status"] for s in changed.steps] == ["cached", "cached", "cached", "built", "built"]
    assert changed.changed and changed.digest != first.digest
    arg = build(store, context, text, build_args={"MODE": "b"})
    assert arg.changed and arg.steps[2]["status"] == "built" and len(arg.output) == 2
    check = build(store, context, text, build_args={"MODE": "c"}, check_mode=True)
    assert check.changed and check.digest is None and check.output == []
    assert check.steps[-1]["status"] == "would build"
    check_same = build(store, context, text, build_args={"MODE": "b"}, check_mode=True)
    assert not check_same.changed and check_same.digest == arg.digest


def test_source_date_epoch_reproducible(tmp_path: Path, base_layout: Path) -> None:
    digests = []
    for run in ("one", "two"):
        store = tmp_path / run / "store"
        import_image(Store(str(store)), BASE, open_source("oci", str(base_layout), "test"))
        context = write_tree(tmp_path / run / "ctx", {"f.txt": "same", "d/g.txt": "g"})
        text = "FROM " + BASE + "\nCOPY . /c/\nRUN echo x > /x && rm /bin/true\nENV A=1\n"
        for compression in ("gzip", "zstd"):
            result = build(
                store,
                context,
                text,
                name=f"localhost/r:{compression}",
                source_date_epoch=1700000000,
                compression=compression,
            )
            digests.append(result.digest)
    assert digests[0] == digests[2] and digests[1] == digests[3] and digests[0] != digests[1]


def test_run_failure_names_the_line(store: Path, tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    with pytest.raises(Exception, match=r"Dockerfile:3: RUN .* exited with code 4: oops"):
        build(store, context, "FROM " + BASE + "\nENV A=1\nRUN echo oops; exit 4\n")
    with pytest.raises(BuildError, match="not in the store"):
        build(store, context, "FROM localhost/missing:1\n")
    assert Store(str(store)).lookup("localhost/out:1") is None


def test_podman_runs_our_image_and_we_build_on_buildah(
    store: Path,
    *,
    base_layout: Path,
    tmp_path: Path,
    buildah: Tool,
    podman: Tool,
    skopeo: Tool,
    containers_storage: str,
) -> None:
    context = write_tree(tmp_path / "context", {"msg": "from lapis\n"})
    build(
        store,
        context,
        "FROM " + BASE + '\nCOPY msg /msg\nRUN echo ran >> /msg\nCMD ["cat", "/msg"]\n',
    )
    skopeo(
        "copy",
        f"oci:{store / 'oci'}:localhost/out:1",
        f"containers-storage:{containers_storage}localhost/ours:1",
    )
    out = podman(
        "run",
        "--rm",
        "--runtime",
        "runc",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--network",
        "none",
        "localhost/ours:1",
    )
    assert out == "from lapis\nran\n"
    # FROM an image buildah built
    buildah_base(buildah, base_layout)
    layout = tmp_path / "buildah-made"
    buildah_build(buildah, tmp_path / "context", "FROM " + BASE + "\nRUN echo b > /b\n", layout)
    import_image(Store(str(store)), "localhost/theirs:1", open_source("oci", str(layout), "theirs"))
    result = build(
        store, context, "FROM localhost/theirs:1\nRUN cat /b > /c\n", name="localhost/on-buildah:1"
    )
    assert result.changed
    tree = our_tree(store, "localhost/on-buildah:1", tmp_path / "o")
    assert tree["c"]["type"] == "file" and tree["b"]["type"] == "file"
