"""Build features buildah 1.28 does not share or that need their own set-up: ONBUILD,
RUN --mount, --network=none, USER in RUN, ADD of URLs with --checksum, COPY --from an
image, the module's own check mode and failures."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.build_executor import (
    BuildError,
    BuildRequest,
    BuildResult,
    build_image,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store
from ansible_collections.lapis.layers.tests.system.image_build.conftest import BASE


def build(
    store: Path, context: Path, text: str, name: str = "localhost/out:1", **kwargs: Any
) -> BuildResult:
    context.mkdir(parents=True, exist_ok=True)
    request = BuildRequest(
        store=str(store), context=str(context), dockerfile_text=text, name=name, **kwargs
    )
    return build_image(request)


def outputs(result: BuildResult) -> list[str]:
    return [str(item["output"]) for item in result.output]


def test_onbuild_triggers_run_in_the_child(store: Path, tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "app.txt").write_text("app\n")
    build(
        store,
        context,
        "FROM " + BASE + "\nONBUILD COPY app.txt /onbuild/\nONBUILD RUN cat /onbuild/app.txt\n",
        name="localhost/parent:1",
    )
    parent = Store(str(store)).resolve("localhost/parent:1").config["config"]
    assert parent["OnBuild"] == ["COPY app.txt /onbuild/", "RUN cat /onbuild/app.txt"]
    child = build(store, context, "FROM localhost/parent:1\nRUN echo child\n")
    assert outputs(child) == ["app\n", "child\n"]
    assert "OnBuild" not in Store(str(store)).resolve("localhost/out:1").config["config"]


def test_run_mounts_network_and_user(store: Path, tmp_path: Path) -> None:
    context = tmp_path / "context"
    (context / "src").mkdir(parents=True)
    (context / "src" / "input.txt").write_text("bound\n")
    text = (
        "FROM " + BASE + "\n"
        "RUN --mount=type=cache,target=/cache echo run >> /cache/log && cat /cache/log\n"
        "RUN --mount=type=bind,source=src,target=/mnt cat /mnt/input.txt\n"
        "RUN --mount=type=bind,source=src,target=/mnt,rw echo x > /mnt/input.txt\n"
        "RUN --mount=type=tmpfs,target=/scratch echo t > /scratch/t && cat /scratch/t\n"
        "RUN --network=none ip -o link | wc -l\n"
        "USER app\nRUN id -u\n"
    )
    first = build(store, context, text)
    assert outputs(first) == ["run\n", "bound\n", "", "t\n", "1\n", "1000\n"]
    assert (context / "src" / "input.txt").read_text() == "bound\n"  # rw bind is a copy
    # the cache mount survives a rebuild; changing the bound file reruns that step only
    (context / "src" / "input.txt").write_text("changed\n")
    second = build(store, context, text, cache=True)
    statuses = [step["status"] for step in second.steps]
    assert statuses[0] == "cached" and statuses[1] == "built"
    third = build(
        store, context, "FROM " + BASE + "\nRUN --mount=type=cache,target=/cache cat /cache/log\n"
    )
    assert outputs(third) == ["run\n"]
    image = Store(str(store)).resolve("localhost/out:1")
    assert len(image.layers) == 3  # base (2) + the last RUN; no /cache in it


@pytest.fixture
def http_files(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on 127.0.0.1 serving tmp_path/www; stopped after the test."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()
    thread.join()


def test_add_url_with_checksum(store: Path, tmp_path: Path, http_files: tuple[str, Path]) -> None:
    url, root = http_files
    (root / "tool.sh").write_text("echo tool\n")
    digest = "sha256:" + hashlib.sha256(b"echo tool\n").hexdigest()
    context = tmp_path / "context"
    text = (
        f"FROM {BASE}\nADD --checksum={digest} {url}/tool.sh /opt/\n"
        f"ADD {url}/tool.sh /opt/renamed.sh\nRUN sh /opt/tool.sh; ls -l /opt/tool.sh\n"
    )
    result = build(store, context, text)
    assert outputs(result)[0].startswith("tool\n-rw-------")
    again = build(store, context, text)
    assert {s["status"] for s in again.steps} == {"cached"}
    (root / "tool.sh").write_text("echo other\n")
    changed = build(store, context, text)
    # --checksum pins the content: still cached (and would fail when fetched); the plain ADD
    # fetches and notices the new content
    assert [s["status"] for s in changed.steps] == ["cached", "built", "built"]
    bad = text.replace(digest, "sha256:" + "0" * 64)
    with pytest.raises(BuildError, match="checksum mismatch"):
        build(store, context, bad, name="localhost/bad:1")


def test_copy_from_image_keeps_owner(store: Path, tmp_path: Path) -> None:
    context = tmp_path / "context"
    build(
        store,
        context,
        "FROM " + BASE + "\nRUN mkdir /d && echo x > /d/f && busybox chown 1000:100 /d/f\n",
        name="localhost/src:1",
    )
    build(
        store,
        context,
        "FROM scratch\nCOPY --from=localhost/src:1 /d /copied\n"
        "COPY --from=localhost/src:1 --chmod=600 /bin/busybox /busybox\n",
    )
    image = Store(str(store)).resolve("localhost/out:1")
    lowers = Store(str(store)).ensure_layers(image)
    copied = Path(lowers[1]) / "copied" / "f"
    assert (copied.stat().st_uid, copied.stat().st_gid) == (1000, 100)
    assert (Path(lowers[0]) / "busybox").stat().st_mode & 0o7777 == 0o600


def test_module_check_mode_and_errors(store: Path, tmp_path: Path, run_module: Any) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM " + BASE + "\nENV A=1\nRUN echo hi\n")
    args = {"name": "localhost/mod:1", "path": str(context), "store": str(store)}
    check = run_module("lapis.layers.image_build", check=True, **args)
    assert check["changed"] and check["digest"] is None
    assert not Store(str(store)).lookup("localhost/mod:1")
    applied = run_module("lapis.layers.image_build", diff=True, **args)
    assert applied["changed"] and applied["output"][0]["output"] == "hi\n"
    assert applied["previous_digest"] is None and applied["reference"] == "localhost/mod:1"
    again = run_module("lapis.layers.image_build", check=True, **args)
    assert not again["changed"] and again["digest"] == applied["digest"]
    (context / "Dockerfile").write_text("FROM " + BASE + "\nCOPY --chwon=1 x /\n")
    failed = run_module("lapis.layers.image_build", **args)
    assert failed["_ansible_rc"] != 0 and "Dockerfile:2: unknown flag --chwon" in failed["msg"]
    missing = run_module("lapis.layers.image_build", **{**args, "path": str(tmp_path / "no")})
    assert missing["_ansible_rc"] != 0 and "no/Dockerfile" in missing["msg"]


def test_target_stage_and_no_leftovers(store: Path, tmp_path: Path) -> None:
    context = tmp_path / "context"
    text = (
        "FROM " + BASE + " AS first\nRUN echo first > /f\n"
        "FROM first AS second\nRUN cat /f\n"
        "FROM " + BASE + "\nRUN exit 9\n"
    )
    result = build(store, context, text, target="second")
    assert outputs(result) == ["", "first\n"]
    assert {step["stage"] for step in result.steps} == {0, 1}
    history = Store(str(store)).resolve("localhost/out:1").config["history"]
    assert [h["created_by"] for h in history][-2:] == [
        "RUN /bin/sh -c echo first > /f",
        "RUN /bin/sh -c cat /f",
    ]
    before = Store(str(store)).lookup("localhost/out:1")
    with pytest.raises(Exception, match="exited with code 9"):
        build(store, context, text)
    assert Store(str(store)).lookup("localhost/out:1") == before
    assert str(store) not in Path("/proc/self/mountinfo").read_text()
    assert list((store / "tmp").iterdir()) == []
