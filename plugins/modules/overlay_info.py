#!/usr/bin/python
# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: overlay_info
short_description: List the overlay mounts of a host with their layers
version_added: 0.1.0
description:
  - Reads the live mount table (C(/proc/self/mountinfo)) and returns every overlay mount
    with its lower directories (topmost first), upper directory, work directory and
    options, with the kernel's escaping removed from the paths.
  - Kernel overlays (file system type C(overlay)) and FUSE overlays (C(fuse.lapis-overlay),
    C(fuse.fuse-overlayfs)) are listed. FUSE does not publish layers in the mount table; for
    this collection's own FUSE backend they are read from its daemon's state file, for
    other FUSE overlays RV(overlays[].lowerdirs) is null.
options:
  path:
    description:
      - Only list the overlay mounted on this path.
    type: path
extends_documentation_fragment:
  - lapis.layers.attributes
attributes:
  check_mode:
    support: full
    details:
      - The module only reads; it runs the same in check mode.
  diff_mode:
    support: none
  idempotent:
    support: full
  platform:
    support: full
    platforms: Linux
seealso:
  - module: lapis.layers.overlay_mount
  - module: ansible.builtin.mount_facts
author:
  - lapis.layers contributors (@lapis-layers)
"""

EXAMPLES = r"""
- name: List every overlay mount
  lapis.layers.overlay_info:
  register: overlays

- name: Show the lower directories of each overlay, topmost first
  ansible.builtin.debug:
    msg: "{{ item.path }}: {{ item.lowerdirs | join(' over ') }}"
  loop: "{{ overlays.overlays | selectattr('lowerdirs') }}"

- name: Look at one mount point
  lapis.layers.overlay_info:
    path: /srv/app/merged
  register: app

- name: Fail when it is not writable
  ansible.builtin.assert:
    that: app.overlays and not app.overlays[0].read_only
"""

RETURN = r"""
overlays:
  description: The overlay mounts, in mount-table order (a later one stacks on an earlier one).
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The mount point.
      type: str
    backend:
      description: V(kernel) for overlayfs, V(fuse) for a FUSE overlay.
      type: str
    fstype:
      description: The file system type from the mount table.
      type: str
    source:
      description: The mount source (usually C(overlay)).
      type: str
    lowerdirs:
      description:
        - The lower directories, topmost first; null when the backend does not publish them.
      type: list
      elements: str
    datadirs:
      description: Data-only lower directories (after C(::) in C(lowerdir=)), kernel 6.5 and newer.
      type: list
      elements: str
    upperdir:
      description: The upper directory; null for a read-only union.
      type: str
    workdir:
      description: The work directory; null for a read-only union.
      type: str
    options:
      description: The other overlay options the kernel shows (it leaves out defaults).
      type: list
      elements: str
    mount_options:
      description: The per-mount flags (C(rw)/C(ro), C(nosuid), C(relatime) ...).
      type: list
      elements: str
    read_only:
      description: True when the merged view cannot be written.
      type: bool
    read_only_union:
      description: True for a kernel overlay without upper and work directory.
      type: bool
  sample:
    - path: /srv/app/merged
      backend: kernel
      fstype: overlay
      source: overlay
      lowerdirs: [/srv/app/layers/config, /srv/app/layers/base]
      datadirs: []
      upperdir: /srv/app/upper
      workdir: /srv/app/work
      options: [index=on]
      mount_options: [rw, relatime]
      read_only: false
      read_only_union: false
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.lapis.layers.plugins.module_utils.fuse_overlay.backend import (
    describe_live,
)
from ansible_collections.lapis.layers.plugins.module_utils.mountinfo import (
    MountInfoError,
    list_overlays,
    read_mountinfo,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={"path": {"type": "path"}},
        supports_check_mode=True,
    )
    try:
        live = list_overlays(read_mountinfo(), module.params["path"])
    except (OSError, MountInfoError) as exc:
        module.fail_json(msg=f"cannot read the mount table /proc/self/mountinfo: {exc}")
    # A FUSE overlay of this collection gets its layers from its daemon's state file.
    described = (describe_live(overlay) or overlay for overlay in live)
    module.exit_json(changed=False, overlays=[overlay.to_dict() for overlay in described])


if __name__ == "__main__":
    main()
