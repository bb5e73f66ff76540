# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The registry options of a module's argument_spec (the lapis.layers.registry doc fragment).

Kept apart from the registry client so that a module which only sometimes talks to a
registry (``image_build`` pulls a missing ``FROM``) declares the options without importing
``http.client`` and ``ssl`` on every run.
"""

from __future__ import annotations

from typing import Any

REGISTRY_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "username": {"type": "str"},
    "password": {"type": "str", "no_log": True},
    "auth_file": {"type": "path"},
    "ca_path": {"type": "path"},
    "insecure_registries": {"type": "list", "elements": "str", "default": []},
    "retries": {"type": "int", "default": 3},
    "parallel": {"type": "int", "default": 4},
}


def registry_params(params: dict[str, Any]) -> dict[str, Any]:
    """The registry options out of a module's parameters."""
    return {key: params.get(key) for key in REGISTRY_ARGUMENT_SPEC}
