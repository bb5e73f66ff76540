# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""A plain OCI image layout as a `BlobSink` and `BlobSource` for the registry client.

This is the minimal layout the client needs when no image store is involved
(pulling into a directory that skopeo or umoci then read, or pushing from one).
Blobs are written to a temporary file beside ``blobs/`` and renamed into place;
``index.json`` is replaced atomically under a file lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ansible_collections.lapis.layers.plugins.module_utils.oci_store import write_atomic

REF_NAME = "org.opencontainers.image.ref.name"


class OciLayout:
    """An OCI image layout directory (created on first use)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def ensure(self) -> None:
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        layout = self.root / "oci-layout"
        if not layout.exists():
            write_atomic(layout, b'{"imageLayoutVersion":"1.0.0"}')
        if not (self.root / "index.json").exists():
            write_atomic(self.root / "index.json", b'{"schemaVersion":2,"manifests":[]}')

    def blob_path(self, digest: str) -> Path:
        algorithm, _sep, hexdigest = digest.partition(":")
        if not hexdigest or "/" in digest or algorithm not in ("sha256", "sha512"):
            raise ValueError(f"invalid blob digest {digest!r}")
        return self.root / "blobs" / algorithm / hexdigest

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def temp_path(self) -> Path:
        self.ensure()
        handle, name = tempfile.mkstemp(prefix=".partial-", dir=self.root / "blobs")
        os.close(handle)
        return Path(name)

    def commit_blob(self, digest: str, temp: Path) -> None:
        final = self.blob_path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        temp.chmod(0o644)
        temp.replace(final)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.ensure()
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def index(self) -> dict[str, Any]:
        path = self.root / "index.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        return data if isinstance(data, dict) else {}

    def tag(self, name: str, descriptor: dict[str, Any]) -> bool:
        """Point ``name`` at ``descriptor`` in ``index.json``; returns whether it changed."""
        with self._locked():
            index = self.index()
            manifests = [
                m
                for m in index.get("manifests", [])
                if (m.get("annotations") or {}).get(REF_NAME) != name
            ]
            entry = dict(descriptor)
            entry["annotations"] = {**(descriptor.get("annotations") or {}), REF_NAME: name}
            if entry in index.get("manifests", []):
                return False
            index["schemaVersion"] = 2
            index["manifests"] = [*manifests, entry]
            write_atomic(self.root / "index.json", json.dumps(index).encode())
            return True

    def lookup(self, name: str) -> dict[str, Any] | None:
        """The descriptor tagged ``name``, or None."""
        for entry in self.index().get("manifests", []):
            if (entry.get("annotations") or {}).get(REF_NAME) == name:
                return dict(entry)
        return None
