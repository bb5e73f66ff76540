# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Action plugin for lapis.layers.container: Ansible's own module run, with less garbage collection.

To build the module's payload, Ansible parses every module_utils file the module reaches
into Python syntax trees, and this module reaches thirteen of ours (the image store, the
layer unpacker, the runtime config and its schema). The worker process that does this holds
the whole of Ansible, so each full pass of Python's cyclic garbage collector that those
short-lived trees trigger walks all of that heap: measured, those passes cost more than the
parsing itself (docs/containers.md, "Speed"). For the task's duration the objects that exist
before it are moved out of the collector's view (``gc.freeze()``) and put back afterwards;
the task runs exactly as with Ansible's default (``normal``) action.
"""

from __future__ import annotations

import gc
from typing import Any

from ansible.plugins.action.normal import ActionModule as NormalActionModule


class ActionModule(NormalActionModule):
    """The ``normal`` action, run with the worker's existing objects frozen."""

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        if gc.get_freeze_count():  # someone else manages the permanent generation
            return super().run(tmp, task_vars)
        gc.freeze()
        try:
            return super().run(tmp, task_vars)
        finally:
            gc.unfreeze()
