"""Shared pytest set-up: makes the collection importable by its Ansible name.

``make`` links the repository into ``build/collections/ansible_collections/lapis/layers``;
this file does the same when pytest is started by hand.
"""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = REPO / "build" / "collections"
LINK = COLLECTIONS / "ansible_collections" / "lapis" / "layers"

if not LINK.exists():
    LINK.parent.mkdir(parents=True, exist_ok=True)
    LINK.symlink_to(REPO)
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))


def shared_dir() -> Path | None:
    """The project's shared conformance material (``../shared``), when it is there."""
    path = Path(os.environ.get("LAPIS_SHARED", REPO.parent / "shared"))
    return path if path.is_dir() else None


@pytest.fixture
def shared() -> Path:
    """Path of ``../shared``; skips the test, saying so, when it is absent."""
    path = shared_dir()
    if path is None:
        pytest.skip("../shared (conformance data) is not beside this checkout")
    return path
