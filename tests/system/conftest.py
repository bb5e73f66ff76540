"""Fixtures for the system tests: real kernel, real tools, run as root.

``run_module`` runs one of our modules (or any module) ad hoc against localhost the
way a user would, and returns the module's result as a dict, read back through the
``tree`` callback (``ansible -t DIR``).
"""

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / "build" / "collections"
RunModule = Callable[..., dict[str, Any]]


def ansible_env() -> dict[str, str]:
    """Environment in which ``ansible`` finds this collection and the venv's Python."""
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_DEPRECATION_WARNINGS="false",
    )
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("system tests need root (real mounts, runtimes and devices)")


@pytest.fixture
def run_module(tmp_path: Path) -> Iterator[RunModule]:
    """Run ``ansible localhost -m MODULE -a JSON`` and return its result dict."""
    counter = iter(range(1_000_000))

    def run(module: str, check: bool = False, diff: bool = False, **args: Any) -> dict[str, Any]:
        tree = tmp_path / f"tree-{next(counter)}"
        cmd = ["ansible", "localhost", "-c", "local", "-i", "localhost,", "-t", str(tree)]
        cmd += ["-m", module, "-a", json.dumps(args)]
        cmd += ["--check"] if check else []
        cmd += ["--diff"] if diff else []
        proc = subprocess.run(cmd, env=ansible_env(), capture_output=True, text=True, check=False)
        result_file = tree / "localhost"
        if not result_file.exists():
            raise AssertionError(f"no result from {module}: {proc.stdout}\n{proc.stderr}")
        result: dict[str, Any] = json.loads(result_file.read_text())
        result["_ansible_rc"] = proc.returncode
        return result

    yield run
