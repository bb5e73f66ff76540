# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Ansible's normal action, with less garbage collection while the task runs.

To build a module's payload, Ansible parses every module_utils file the module reaches
into Python syntax trees; `container` and `image_build` reach thousands of lines of ours.
The worker process that does this holds the whole of Ansible, so each full pass of
Python's cyclic garbage collector that those short-lived trees trigger walks all of that
heap, and the young generation is collected every 700 new objects while a tree of
thousands is being built: measured, those passes cost more than the parsing itself
(docs/containers.md, "Speed"). For the task's duration the objects that exist before it
are moved out of the collector's view (``gc.freeze()``) and the young generation is
collected less often; both are put back afterwards. The task itself runs exactly as with
Ansible's default (``normal``) action.
"""

from __future__ import annotations

import gc
from typing import Any

from ansible.plugins.action.normal import ActionModule as NormalActionModule

# New objects between two collections of the young generation during the task (Python's
# default is 700); the garbage of the syntax trees waits at most this long.
YOUNG_THRESHOLD = 20_000


class LeanGcAction(NormalActionModule):
    """The ``normal`` action, with the worker's objects frozen and fewer young collections."""

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        if gc.get_freeze_count():  # someone else manages the permanent generation
            return super().run(tmp, task_vars)
        thresholds = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(max(thresholds[0], YOUNG_THRESHOLD), *thresholds[1:])
        try:
            return super().run(tmp, task_vars)
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()
