# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Descriptions of the module attributes that every lapis.layers module declares."""


class ModuleDocFragment:
    """Shared C(attributes) descriptions; each module sets C(support) and C(details)."""

    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description:
      - Can run in check mode and return a changed status prediction without modifying the target.
  diff_mode:
    description:
      - Will return details on what has changed (or possibly needs changing in check mode),
        when in diff mode.
  idempotent:
    description:
      - When run twice in a row outside check mode with the same arguments, the second run
        reports no change.
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
"""

    ACTION = r"""
options: {}
attributes:
  action:
    description:
      - Has a corresponding action plugin, so part of the work runs on the controller.
"""
