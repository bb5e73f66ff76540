#!/usr/bin/python
# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: image_unpack
short_description: Unpack an image of the store as a root filesystem, layers or OCI bundle
version_added: 0.1.0
description:
  - Makes an image of the host's image store usable outside the store.
  - V(flat) writes one root filesystem to O(dest) with every whiteout applied, the tree that
    C(umoci unpack) gives.
  - V(layers) unpacks the image's missing layers into the store's layer cache (overlay
    format, one directory per chain id) and returns them as ordered overlay lowerdirs.
  - V(bundle) writes an OCI runtime bundle to O(dest), C(rootfs/) plus a C(config.json)
    generated from the image config (command, environment, working directory, user) and
    validated against the OCI runtime-spec schema.
  - O(dest) is built in a temporary directory beside it and renamed into place when
    complete. A marker file C(.<name>.lapis-image.json) beside O(dest) records the image
    digest and format, so a second run with the same image changes nothing.
  - Two runs writing the same O(dest) at once take turns on a lock file
    C(.<name>.lapis-lock) beside it; the second finds O(dest) written and reports no change.
author:
  - lapis.layers contributors (@lapis-layers)
options:
  image:
    description:
      - Reference of an image in the store, for example V(alpine) or
        V(registry.example.com/team/app:1.2).
    type: str
    required: true
  dest:
    description:
      - Absolute path of the directory to write with O(format=flat) or O(format=bundle)
        (required then). Not used with O(format=layers).
      - Replaced as a whole when the image changes.
    type: path
  format:
    description:
      - What to produce, see the description.
    type: str
    choices: [flat, layers, bundle]
    default: flat
  force:
    description:
      - Replace O(dest) even when it is a non-empty directory that no earlier unpack wrote.
    type: bool
    default: false
extends_documentation_fragment:
  - lapis.layers.attributes
  - lapis.layers.store
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: Shows the image, manifest digest and format recorded for O(dest) before and after.
  idempotent:
    support: full
    details: Decided from the marker beside O(dest); changes made by hand inside O(dest) are not
      detected. Use O(force) or remove O(dest) to rebuild it.
  platform:
    platforms: posix
notes:
  - Runs as root, so that owners, device nodes, setuid bits and xattrs are reproduced.
  - The bundle's C(config.json) has the defaults of M(lapis.layers.container) (own network
    namespace with loopback only, default capabilities, C(noNewPrivileges)); use that module to
    run containers with options.
seealso:
  - module: lapis.layers.image
  - module: lapis.layers.container
"""

EXAMPLES = r"""
- name: Unpack an image as a plain root filesystem
  lapis.layers.image_unpack:
    image: registry.example.com/tools/busybox:1.36
    dest: /srv/rootfs/busybox

- name: Get the overlay lowerdirs of an image
  lapis.layers.image_unpack:
    image: web:2024.06
    format: layers
  register: web_layers

- name: Write an OCI runtime bundle that runc can run
  lapis.layers.image_unpack:
    image: web:2024.06
    dest: /srv/bundles/web
    format: bundle
"""

RETURN = r"""
image:
  description: Full normalised reference of the image.
  returned: always
  type: str
  sample: docker.io/library/busybox:latest
manifest_digest:
  description: Manifest digest of the image.
  returned: always
  type: str
  sample: sha256:1248d9d348f384dab4ee071a1ef222524fb059ad37449a9914bd81da27778584
lowerdirs:
  description: The image's layer directories in the store, topmost first, as overlayfs
    expects them in C(lowerdir=).
  returned: always
  type: list
  elements: str
  sample:
    - /var/lib/lapis/layers/9270afeab0a3894cdec058a0cd074825e98f4aae9e4462ce4236cd68a3c75df4/diff
layers_unpacked:
  description: Chain ids of the layers this run unpacked into the store.
  returned: always
  type: list
  elements: str
  sample: []
rootfs:
  description: The root filesystem written (O(dest) or O(dest)/rootfs).
  returned: when O(format) is V(flat) or V(bundle)
  type: str
  sample: /srv/bundles/web/rootfs
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import ManifestError
from ansible_collections.lapis.layers.plugins.module_utils.oci_refs import InvalidReference
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store, StoreError
from ansible_collections.lapis.layers.plugins.module_utils.oci_unpack import (
    UnpackError,
    apply_unpack,
    plan_unpack,
)

ERRORS = (InvalidReference, StoreError, ManifestError, UnpackError, OSError)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "image": {"type": "str", "required": True},
            "dest": {"type": "path"},
            "format": {"type": "str", "default": "flat", "choices": ["flat", "layers", "bundle"]},
            "force": {"type": "bool", "default": False},
            "store": {"type": "path", "default": "/var/lib/lapis"},
        },
        supports_check_mode=True,
    )
    p = module.params
    store = Store(p["store"])
    try:
        plan = plan_unpack(store, p["image"], p["format"], p["dest"], p["force"])
        lowerdirs = [str(store.lowerdir(c)) for c in reversed(plan.image.chain_ids)]
        if plan.changed and not module.check_mode:
            lowerdirs = apply_unpack(store, plan)
    except ERRORS as exc:
        module.fail_json(msg=f"image_unpack {p['image']}: {exc}")
    for warning in store.warnings:
        module.warn(warning)
    result = {
        "changed": plan.changed,
        "image": plan.image.reference,
        "manifest_digest": plan.image.manifest_digest,
        "lowerdirs": lowerdirs,
        "layers_unpacked": plan.missing_layers,
        "diff": {"before": plan.before, "after": plan.after},
    }
    if plan.dest is not None:
        result["rootfs"] = str(plan.dest if plan.fmt == "flat" else plan.dest / "rootfs")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
