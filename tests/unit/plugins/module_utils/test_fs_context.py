"""The kernel's own words about a refused mount, read through fsopen/fsconfig."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.fs_context import (
    kernel_messages,
    overlay_failure_reason,
    spec_parameters,
)
from ansible_collections.lapis.layers.plugins.module_utils.overlay import build_spec

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="fsopen needs CAP_SYS_ADMIN")


@pytest.fixture
def layers(tmp_path: Path) -> Path:
    for name in ("l1", "l2", "u", "w", "m"):
        (tmp_path / name).mkdir()
    return tmp_path


def test_spec_parameters_keep_fs_options_and_ro_only() -> None:
    spec = build_spec("/m", ["/a,b", "/c"], "/u", "/w", ["index=on", "userxattr", "ro", "nosuid"])
    assert spec_parameters(spec) == [
        ("lowerdir", "/a\\,b:/c"),
        ("upperdir", "/u"),
        ("workdir", "/w"),
        ("index", "on"),
        ("userxattr", None),
        ("ro", None),
    ]


@needs_root
def test_unknown_option_is_named_by_the_kernel(layers: Path) -> None:
    spec = build_spec(
        str(layers / "m"),
        [str(layers / "l1"), str(layers / "l2")],
        str(layers / "u"),
        str(layers / "w"),
        ["lapis_bogus=1"],
    )
    messages = overlay_failure_reason(spec)
    assert any("Unknown parameter 'lapis_bogus'" in message for message in messages)


@needs_root
def test_nothing_is_mounted_by_the_probe(layers: Path) -> None:
    spec = build_spec(str(layers / "m"), [str(layers / "l1"), str(layers / "l2")])
    assert overlay_failure_reason(spec) == []
    assert not os.path.ismount(layers / "m")


def test_unknown_file_system_type_gives_no_messages() -> None:
    assert kernel_messages("lapis-no-such-fs", [("x", "y")]) == []
