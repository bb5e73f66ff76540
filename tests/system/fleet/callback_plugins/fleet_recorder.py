# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Test-only callback: records the results of image_copy tasks and the play stats as JSON.

Enabled by the fleet tests (``ANSIBLE_CALLBACKS_ENABLED=fleet_recorder``) beside the default
stdout callback, which keeps printing, so a test can follow a run while it goes. Writes
``$FLEET_RECORD`` at the end of the run: ``{"copies": {host: [result, ...]},
"stats": {host: {"ok": n, "changed": n, "failures": n, "unreachable": n}}}``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: fleet_recorder
type: aggregate
short_description: Record image_copy results and play stats for the fleet tests
description:
  - Writes the results of M(lapis.layers.image_copy) tasks and the per-host stats to the
    JSON file named by the environment variable C(FLEET_RECORD).
requirements:
  - enabled in the configuration
"""


class CallbackModule(CallbackBase):
    """Keep image_copy results per host; dump them with the stats at the end."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fleet_recorder"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.copies: dict[str, list[dict[str, Any]]] = {}

    def _record(self, result: Any) -> None:
        if "image_copy" not in str(result._task.action):
            return
        data = dict(result._result)
        items = data.get("results") or [data]
        host = result._host.get_name()
        self.copies.setdefault(host, []).extend(
            {k: v for k, v in item.items() if not k.startswith("_ansible")} for item in items
        )

    def v2_runner_on_ok(self, result: Any) -> None:
        self._record(result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._record(result)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        hosts = sorted(stats.processed)
        summary = {host: stats.summarize(host) for host in hosts}
        path = os.environ.get("FLEET_RECORD")
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump({"copies": self.copies, "stats": summary}, handle, default=str)
