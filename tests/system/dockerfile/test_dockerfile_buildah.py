"""Differential tests of the Dockerfile front end against ``buildah bud``.

Dockerfiles without RUN steps are built by buildah (vfs storage in a private
directory, nothing executed in a container), and the image config it writes
and the files its ``COPY`` takes from the build context are compared with what
our planner and context lister compute for the same input.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_context import (
    context_sources,
    load_ignore_matcher,
)
from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_plan import plan_build

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
    "Healthcheck",
    "OnBuild",
    "Shell",
)

Buildah = Callable[..., str]


@pytest.fixture
def buildah(tmp_path: Path) -> Iterator[Buildah]:
    """``buildah`` with its own vfs storage under tmp_path; removes what it made."""
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed")
    store = tmp_path / "buildah"
    base = ["buildah", "--root", str(store / "root"), "--runroot", str(store / "run")]
    base += ["--storage-driver", "vfs"]

    def run(*args: str) -> str:
        proc = subprocess.run([*base, *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise AssertionError("buildah %s failed: %s" % (" ".join(args), proc.stderr))
        return proc.stdout

    yield run
    subprocess.run([*base, "umount", "--all"], capture_output=True, check=False)
    subprocess.run([*base, "rm", "--all"], capture_output=True, check=False)
    subprocess.run([*base, "rmi", "--all", "--force"], capture_output=True, check=False)
    shutil.rmtree(store, ignore_errors=True)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _bud(buildah: Buildah, context: Path, tag: str, *args: str) -> dict[str, object]:
    """Build with buildah in Docker format (it keeps SHELL, ONBUILD and HEALTHCHECK)."""
    options = ["--format", "docker", "--runtime", "runc", "--isolation", "chroot", "-q"]
    buildah("bud", *options, "-t", tag, *args, str(context))
    config: dict[str, object] = json.loads(buildah("inspect", "-t", "image", tag))["Docker"][
        "config"
    ]
    labels = config.get("Labels")
    if isinstance(labels, dict):
        labels.pop("io.buildah.version", None)
    return config


def _normal(value: object) -> object:
    """Empty values and absent keys mean the same thing in a config."""
    return value if value not in ({}, [], "", None) else None


def _ours(context: Path, **kwargs: object) -> dict[str, object]:
    text = (context / "Dockerfile").read_text()
    config = plan_build(text, **kwargs).target_stage.config.to_oci()  # type: ignore[arg-type]
    return config


# buildah 1.28 (Debian 12) has no ``${v-w}``/``${v+w}`` (without the colon), no heredocs
# and uses /bin/sh for shell-form ENTRYPOINT/CMD whatever SHELL says, and keeps an
# EXPOSE range as one key; Docker expands ranges and honours SHELL. Those cases are
# covered by the unit tests against Docker's documented behaviour instead.
CONFIG_CASES = {
    "substitution": (
        "FROM scratch\nARG SET=value\nARG EMPTY=\n"
        "ENV A=${SET:-d} B=${EMPTY:-d} D=${SET:+alt} E=${UNSET:+alt} F=\\$SET\n"
        'ENV G=\'$SET\' H="$SET x" I=${SET}s J=a\\ b K="a\\"b"\n'
        'LABEL "key with space"="v $SET" other=$A$B\nUSER ${SET}:${UNSET:-grp}\n',
        {"SET": "given"},
        None,
    ),
    "scalars-and-args": (
        'ARG TAG=1\nFROM scratch\nARG V=1\nARG TAG\nENV A=$V B="x y" C=${TAG:-none}\n'
        "ENV LEGACY value with spaces\nLABEL l=$A m=\"$B\" n='$A'\nWORKDIR /w/$A\nWORKDIR sub\n"
        'EXPOSE 80 53/udp\nVOLUME /data ["/x"]\nUSER 1000:$V\nSTOPSIGNAL SIGINT\n'
        'ENTRYPOINT ["/e"]\nCMD c d\n',
        {"V": "2", "TAG": "7"},
        None,
    ),
    "entrypoint-healthcheck-onbuild": (
        'FROM scratch AS base\nCMD ["from-base"]\nFROM base\nENTRYPOINT exec app --flag\n'
        "ENV PATH=/opt/bin:$PATH\nHEALTHCHECK --interval=5s --retries=3 CMD check\n"
        'ONBUILD RUN make\nSHELL ["/bin/ash", "-c"]\n',
        {},
        None,
    ),
    "cmd-kept-when-set-in-stage": (
        'FROM scratch\nCMD ["kept"]\nENTRYPOINT ["/e"]\nHEALTHCHECK NONE\n',
        {},
        None,
    ),
    "multi-stage-target": (
        "ARG BASE=scratch\nFROM $BASE AS one\nENV ONE=1\nFROM one AS two\nENV TWO=$ONE$ONE\n"
        'CMD ["two"]\nFROM scratch AS three\nENV THREE=3\n',
        {},
        "two",
    ),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_image_config_matches_buildah(buildah: Buildah, tmp_path: Path, case: str) -> None:
    text, build_args, target = CONFIG_CASES[case]
    context = tmp_path / "ctx"
    _write(context, {"Dockerfile": text})
    args = [arg for k, v in build_args.items() for arg in ("--build-arg", "%s=%s" % (k, v))]
    args += ["--target", target] if target else []
    theirs = _bud(buildah, context, "lapis-df-" + case, *args)
    ours = _ours(context, build_args=build_args, target=target)
    for field in CONFIG_FIELDS:
        assert _normal(ours.get(field)) == _normal(theirs.get(field)), field


IGNORE_CASES = {
    "exceptions": "docs\n!docs/keep.md\n*.tmp\n",
    "double-star": "**/*.log\n/top-only.txt\nsrc/**/gen\n",
    "last-match-wins": "*.md\n!README*.md\nREADME-secret.md\n",
    "parent-dir": "src\n!src/keep\n",
    "reinclude-needs-prefix": "docs\nsrc\n!**/keep.md\n!**/x.c\n",
}

CONTEXT_FILES = {
    "Dockerfile": "FROM scratch\nCOPY . /ctx/\n",
    "README.md": "r\n",
    "README-secret.md": "s\n",
    "CHANGES.md": "c\n",
    "top-only.txt": "t\n",
    "deep/top-only.txt": "t\n",
    "docs/keep.md": "k\n",
    "docs/drop.md": "d\n",
    "a.tmp": "x\n",
    "src/keep/x.c": "x\n",
    "src/keep/keep.md": "k\n",
    "docs/sub/keep.md": "k\n",
    "src/x.log": "l\n",
    "src/a/gen/out.c": "g\n",
    "src/a/b/gen/out.c": "g\n",
    "src/a/main.c": "m\n",
}


def _image_tree(buildah: Buildah, tag: str) -> list[str]:
    container = buildah("from", "--pull-never", tag).strip()
    try:
        root = Path(buildah("mount", container).strip()) / "ctx"
        return sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    finally:
        buildah("umount", container)
        buildah("rm", container)


@pytest.mark.parametrize("case", sorted(IGNORE_CASES))
def test_dockerignore_matches_buildah(buildah: Buildah, tmp_path: Path, case: str) -> None:
    context = tmp_path / "ctx"
    _write(context, {**CONTEXT_FILES, ".dockerignore": IGNORE_CASES[case]})
    _bud(buildah, context, "lapis-df-ignore-" + case)
    theirs = _image_tree(buildah, "lapis-df-ignore-" + case)
    matcher = load_ignore_matcher(str(context), str(context / "Dockerfile"))
    ours = sorted(e.path for m in context_sources(str(context), ["."], matcher) for e in m.entries)
    assert ours == theirs
