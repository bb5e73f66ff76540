# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Action plugin for lapis.layers.container: the normal module run, collecting less garbage.

The module reaches a large part of this collection's module_utils; see
`plugins/plugin_utils/lean_gc.py` for why collecting less while Ansible builds its payload
pays off, and docs/containers.md ("Speed") for the measurements.
"""

from __future__ import annotations

from ansible_collections.lapis.layers.plugins.plugin_utils.lean_gc import LeanGcAction


class ActionModule(LeanGcAction):
    """The ``normal`` action for lapis.layers.container, collecting less while it runs."""
