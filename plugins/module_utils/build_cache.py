# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The build cache: one small JSON record per step, keyed by the step's cache key.

``<store>/build/cache/<key hex>.json`` holds what a step produced: its history
timestamp and, for steps that made a layer, the layer blob (digest, diff_id, media
type, size) and the chain id of its directory. A record is only used when the blob
and the layer directory are still in the store (garbage collection may have taken
the layers of images that are no longer tagged); otherwise the step is built again.
The key itself (``dockerfile_plan.step_cache_key``) covers the parent chain, the
instruction after substitution, the build args it uses and the content of its
sources, so a record never needs invalidating: a different input is a different key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ansible_collections.lapis.layers.plugins.module_utils.build_layer import BuiltLayer
from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import (
    canonical_json,
    digest_hex,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store, write_atomic


@dataclass(frozen=True)
class CacheRecord:
    """What one step produced: its history timestamp and its layer (None: empty layer)."""

    key: str
    created: str
    layer: BuiltLayer | None = None
    chain_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "created": self.created,
            "layer": self.layer.to_dict() if self.layer else None,
            "chain_id": self.chain_id,
        }


class BuildCache:
    """Cache records of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.root = store.root / "build" / "cache"

    def _path(self, key: str) -> Path:
        return self.root / f"{digest_hex(key)}.json"

    def get(self, key: str) -> CacheRecord | None:
        """The record for ``key`` if it exists and its layer is still in the store."""
        try:
            doc = json.loads(self._path(key).read_bytes())
            layer = BuiltLayer.from_dict(doc["layer"]) if doc.get("layer") else None
            record = CacheRecord(
                str(doc["key"]), str(doc["created"]), layer, str(doc.get("chain_id") or "")
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if record.key != key:
            return None
        if layer is not None and not (
            self.store.has_blob(layer.digest) and self.store.has_layer(record.chain_id)
        ):
            return None
        return record

    def put(self, record: CacheRecord) -> None:
        """Store a record (atomically)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self._path(record.key), canonical_json(record.to_dict()))
