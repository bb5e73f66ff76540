#!/usr/bin/python
# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: image
short_description: Import an image into the host's image store, or remove it
version_added: 0.1.0
description:
  - Imports a container image from an OCI image layout directory, an OCI archive or a
    docker-archive (as written by C(docker save) or C(skopeo copy ... docker-archive:)) into
    the image store of the managed host, and tags it with O(name).
  - Manifest, config and every layer blob are checked against their digests and sizes, and
    every layer against the diff_id in the image config, before the tag becomes visible.
    A failed import leaves the store as it was.
  - Each layer is unpacked once into the store's layer cache (one directory per chain id,
    in overlay format); images that share base layers share those directories.
  - O(state=absent) removes the tag and garbage-collects blobs and layer directories that
    no other image and no container uses. When an import moves an existing tag to another
    image, the image it named before is collected the same way.
author:
  - lapis.layers contributors (@lapis-layers)
options:
  name:
    description:
      - Reference under which the image is stored, for example V(alpine) (stored as
        C(docker.io/library/alpine:latest)), V(registry.example.com:5000/team/app:1.2).
    type: str
    required: true
  state:
    description:
      - V(present) imports the image unless O(name) already names the same manifest.
      - V(absent) removes the tag and garbage-collects what nothing references.
    type: str
    choices: [present, absent]
    default: present
  source:
    description:
      - Kind of O(path). Required with O(state=present).
      - V(oci) is an OCI image layout directory, V(oci-archive) a tar of one,
        V(docker-archive) a C(docker save) tar (its layers may be uncompressed).
    type: str
    choices: [oci, oci-archive, docker-archive]
  path:
    description:
      - Path of the layout directory or archive on the managed host. Required with
        O(state=present).
    type: path
  source_ref:
    description:
      - Which image of a layout or archive that holds several, by its
        C(org.opencontainers.image.ref.name) (layouts) or one of its C(RepoTags)
        (docker-archive); V(@N) picks the N-th image (from 0).
      - Optional when the source holds one image.
    type: str
  force:
    description:
      - Import again even when O(name) already names the same manifest digest and the store
        has all of it. Layer blobs are re-hashed, corrupted ones replaced, missing layer
        directories unpacked again.
    type: bool
    default: false
extends_documentation_fragment:
  - lapis.layers.attributes
  - lapis.layers.store
attributes:
  check_mode:
    support: full
    details: The source is read (manifest and, for docker-archive, layer digests) but nothing
      is written to the store.
  diff_mode:
    support: full
    details: Shows the manifest digest the tag names before and after.
  idempotent:
    support: full
  platform:
    platforms: posix
notes:
  - Runs as root on the managed host. Layers are unpacked with their owners, device nodes
    and overlay whiteouts (0/0 character devices), which needs C(CAP_MKNOD), and with
    C(trusted.*) xattrs, which need C(CAP_SYS_ADMIN).
  - A docker-archive has no manifest; the store writes a canonical OCI manifest for it, so the
    manifest digest differs from the one a registry would show for the same image.
  - A Docker schema2 manifest is stored as the equivalent OCI manifest (same config and layer
    blobs), because tools that read OCI layouts skip Docker manifests. RV(manifest_digest) is
    then the stored digest and RV(source_manifest_digest) the source's.
  - Pulling from a registry is not part of this module yet.
  - When the tagged manifest is an image index, the manifest for the host's platform is used.
seealso:
  - module: lapis.layers.image_info
  - module: lapis.layers.image_unpack
"""

EXAMPLES = r"""
- name: Import an image that skopeo exported as an OCI layout
  lapis.layers.image:
    name: registry.example.com/tools/busybox:1.36
    source: oci
    path: /tmp/busybox-oci
    source_ref: "1.36"

- name: Import the web image from a docker save archive
  lapis.layers.image:
    name: web:2024.06
    source: docker-archive
    path: /srv/images/web.tar

- name: Remove an image and free its layers
  lapis.layers.image:
    name: web:2024.05
    state: absent
"""

RETURN = r"""
reference:
  description: The full normalised reference of the image in the store.
  returned: always
  type: str
  sample: docker.io/library/alpine:latest
manifest_digest:
  description: Digest of the manifest that O(name) names now (or would name, in check mode).
    Empty after O(state=absent).
  returned: always
  type: str
  sample: sha256:2bfd9dafcdb18e82e86b6a2360929b48ddda8af5d54bfd37fd70e01a1bc70afb
source_manifest_digest:
  description: Digest of the source's own manifest when the store keeps another form of it
    (a Docker schema2 manifest is stored as the equivalent OCI manifest, which skopeo and
    umoci can read); null when the stored manifest is the source's.
  returned: when O(state=present)
  type: str
  sample: null
previous_digest:
  description: Digest of the manifest that O(name) named before, or null.
  returned: always
  type: str
  sample: null
blobs_added:
  description: Digests of the blobs this run added to the store.
  returned: when O(state=present)
  type: list
  elements: str
  sample: [sha256:affda64aa7257a566c8f27ba4bf30527f115ca96633d84e457aef44b65d8ac8f]
layers_unpacked:
  description: Chain ids of the layers this run unpacked into the layer cache.
  returned: when O(state=present)
  type: list
  elements: str
  sample: [sha256:8897395fd26dc44ad0e2a834335b33198cb41ac4d98dfddf58eced3853fa7b17]
removed_blobs:
  description: Digests of the blobs garbage collection removed (after O(state=absent), or
    when an import moved the tag away from another image).
  returned: always
  type: list
  elements: str
  sample: []
removed_layers:
  description: Chain ids of the layer directories garbage collection removed.
  returned: always
  type: list
  elements: str
  sample: []
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.lapis.layers.plugins.module_utils.image_import import (
    SourceError,
    import_image,
    open_source,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import ManifestError
from ansible_collections.lapis.layers.plugins.module_utils.oci_refs import (
    InvalidReference,
    parse_image_ref,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store, StoreError

ERRORS = (InvalidReference, SourceError, StoreError, ManifestError, OSError)


def ensure_present(module: AnsibleModule, store: Store, reference: str) -> dict:
    """Import the image unless the tag already names it; collect what a moved tag freed."""
    p = module.params
    source = open_source(p["source"], p["path"], p["source_ref"])
    try:
        result = import_image(store, reference, source, p["force"], module.check_mode)
    finally:
        source.close()
    removed_blobs: list = []
    removed_layers: list = []
    moved = result.previous_digest not in (None, result.manifest_digest)
    if moved and not module.check_mode:
        gc = store.gc()
        removed_blobs, removed_layers = gc.blobs, gc.layers
    return {
        "changed": result.changed,
        "diff": {
            "before": {"reference": reference, "manifest_digest": result.previous_digest},
            "after": {"reference": reference, "manifest_digest": result.manifest_digest},
        },
        "removed_blobs": removed_blobs,
        "removed_layers": removed_layers,
        **result.to_dict(),
    }


def ensure_absent(module: AnsibleModule, store: Store, reference: str) -> dict:
    """Remove the tag and garbage-collect what nothing references."""
    current = store.lookup(reference)
    previous = current.digest if current is not None else None
    removed_blobs: list = []
    removed_layers: list = []
    if previous is not None and not module.check_mode:
        previous, gc = store.remove(reference)
        removed_blobs, removed_layers = gc.blobs, gc.layers
    return {
        "changed": previous is not None,
        "reference": reference,
        "manifest_digest": "",
        "previous_digest": previous,
        "removed_blobs": removed_blobs,
        "removed_layers": removed_layers,
        "diff": {
            "before": {"reference": reference, "manifest_digest": previous},
            "after": {"reference": reference, "manifest_digest": None},
        },
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "source": {"type": "str", "choices": ["oci", "oci-archive", "docker-archive"]},
            "path": {"type": "path"},
            "source_ref": {"type": "str"},
            "force": {"type": "bool", "default": False},
            "store": {"type": "path", "default": "/var/lib/lapis"},
        },
        required_if=[("state", "present", ("source", "path"))],
        supports_check_mode=True,
    )
    name = module.params["name"]
    store = Store(module.params["store"])
    try:
        reference = str(parse_image_ref(name))
        if module.params["state"] == "present":
            result = ensure_present(module, store, reference)
        else:
            result = ensure_absent(module, store, reference)
    except ERRORS as exc:
        module.fail_json(msg=f"image {name}: {exc}")
    for warning in store.warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
