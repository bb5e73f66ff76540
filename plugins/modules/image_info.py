#!/usr/bin/python
# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: image_info
short_description: List the images in the host's image store
version_added: 0.1.0
description:
  - Returns every image of the store (or those O(name) selects) with its manifest digest,
    size, layers and the run configuration from its image config.
author:
  - lapis.layers contributors (@lapis-layers)
options:
  name:
    description:
      - Only these images. Each item is a reference (normalised, so V(alpine) matches
        C(docker.io/library/alpine:latest)) or a shell pattern matched against the full
        reference (V(docker.io/library/*)).
    type: list
    elements: str
extends_documentation_fragment:
  - lapis.layers.attributes
  - lapis.layers.store
attributes:
  check_mode:
    support: full
    details: The module only reads the store.
  diff_mode:
    support: none
  idempotent:
    support: full
  platform:
    platforms: posix
seealso:
  - module: lapis.layers.image
"""

EXAMPLES = r"""
- name: List all images
  lapis.layers.image_info:
  register: store_images

- name: Show the command of the web image
  lapis.layers.image_info:
    name: web:2024.06
  register: web_info
"""

RETURN = r"""
images:
  description: The images, sorted by reference.
  returned: always
  type: list
  elements: dict
  contains:
    reference:
      description: Full normalised reference.
      type: str
      sample: docker.io/library/busybox:latest
    manifest_digest:
      description: Manifest digest.
      type: str
      sample: sha256:1248d9d348f384dab4ee071a1ef222524fb059ad37449a9914bd81da27778584
    media_type:
      description: Manifest media type (OCI or Docker schema2).
      type: str
      sample: application/vnd.oci.image.manifest.v1+json
    config_digest:
      description: Digest of the image config.
      type: str
      sample: sha256:31a5b244ff3a823aeed65e9c25e894a08570ff4188c01427bf3cb21882899f0b
    size:
      description: Bytes of manifest, config and layer blobs.
      type: int
      sample: 1203344
    created:
      description: Creation time from the image config, if any.
      type: str
      sample: "2024-06-01T10:00:00Z"
    os:
      description: Operating system from the image config.
      type: str
      sample: linux
    architecture:
      description: Architecture from the image config.
      type: str
      sample: amd64
    layers:
      description: Layers, bottom first, with C(digest), C(diff_id), C(chain_id),
        C(media_type), C(size) and C(unpacked) (whether the layer cache has it).
      type: list
      elements: dict
      sample: []
    config:
      description: C(Env), C(Cmd), C(Entrypoint), C(WorkingDir), C(User), C(ExposedPorts) and
        C(Labels) from the image config (null when unset).
      type: dict
      sample: {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "Entrypoint": null}
problems:
  description: Tags whose manifest or config cannot be read, with the reason.
  returned: always
  type: list
  elements: str
  sample: []
"""

import fnmatch

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import ManifestError
from ansible_collections.lapis.layers.plugins.module_utils.oci_refs import (
    InvalidReference,
    normalize_image_ref,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import (
    Store,
    StoredImage,
    StoreError,
)

CONFIG_KEYS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Labels")


def selected(reference: str, patterns: list) -> bool:
    """Whether ``reference`` is one of ``patterns`` (references or shell patterns)."""
    for pattern in patterns:
        try:
            if normalize_image_ref(pattern) == reference:
                return True
        except InvalidReference:
            pass
        if fnmatch.fnmatchcase(reference, pattern):
            return True
    return False


def describe(store: Store, image: StoredImage) -> dict:
    """An image as ``image_info`` returns it."""
    run_config = image.config.get("config") or {}
    return {
        "reference": image.reference,
        "manifest_digest": image.manifest_digest,
        "media_type": image.manifest_media_type,
        "config_digest": image.config_digest,
        "size": image.size,
        "created": image.config.get("created"),
        "os": image.config.get("os"),
        "architecture": image.config.get("architecture"),
        "layers": [
            {
                "digest": layer.digest,
                "diff_id": layer.diff_id,
                "chain_id": layer.chain_id,
                "media_type": layer.media_type,
                "size": layer.size,
                "unpacked": store.has_layer(layer.chain_id),
            }
            for layer in image.layers
        ],
        "config": {key: run_config.get(key) for key in CONFIG_KEYS},
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "list", "elements": "str"},
            "store": {"type": "path", "default": "/var/lib/lapis"},
        },
        supports_check_mode=True,
    )
    store = Store(module.params["store"])
    patterns = module.params["name"]
    problems: list = []
    try:
        images = store.list_images(on_error=lambda ref, exc: problems.append(f"{ref}: {exc}"))
        wanted = [i for i in images if not patterns or selected(i.reference, patterns)]
        result = [describe(store, i) for i in wanted]
    except (StoreError, ManifestError, OSError) as exc:
        module.fail_json(msg=f"image_info: store {store.root}: {exc}")
    module.exit_json(changed=False, images=result, problems=problems)


if __name__ == "__main__":
    main()
