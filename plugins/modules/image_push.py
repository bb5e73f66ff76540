#!/usr/bin/python
# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: image_push
short_description: Push an image from the host's image store to a container registry
version_added: 0.1.0
description:
  - Sends the image O(name) from the image store of the managed host to a registry over the
    OCI distribution API, without any daemon. Config and layer blobs go first, the manifest
    last, so the tag never names an incomplete image.
  - Every blob the registry already holds in the destination repository is skipped; a blob
    found in one of the O(mount_from) repositories of the same registry is mounted instead
    of uploaded. An image index is pushed with all its platform manifests.
  - With O(path), writes the image to a path instead, as an OCI layout, an OCI archive or a
    docker-archive (O(format)).
  - Nothing changes when the destination tag already names the same manifest digest.
author:
  - lapis.layers contributors (@lapis-layers)
options:
  name:
    description:
      - The image in the store, for example V(alpine) (C(docker.io/library/alpine:latest)) or
        V(registry.example.com:5000/team/app:1.2).
    type: str
    required: true
  dest:
    description:
      - The registry reference to push to, for example
        V(registry.example.com:5000/team/app:1.2). Default is O(name) itself.
      - With O(path), the name the image gets there (the layout's
        C(org.opencontainers.image.ref.name), the docker-archive's C(RepoTags) entry);
        default is the normalised O(name).
    type: str
  path:
    description:
      - Write the image to this path on the managed host instead of a registry, as a directory
        for O(format=oci) (created, or added to when it is a layout already), a file for the
        archive formats (written beside it and renamed over it).
      - The registry options are not used then.
    type: path
  format:
    description:
      - The format written to O(path). V(oci) is an OCI image layout, V(oci-archive) a tar
        of one, V(docker-archive) what C(docker load) reads (the layers stay compressed as
        they are in the store).
    type: str
    choices: [oci, oci-archive, docker-archive]
    default: oci
  mount_from:
    description:
      - Repositories on the destination registry (without the host, for example
        V(team/base)) to mount blobs from instead of uploading them.
    type: list
    elements: str
    default: []
  chunk_size:
    description:
      - Upload each blob in chunks of this many bytes (C(PATCH) requests), for registries or
        proxies that limit request sizes. V(0) sends each blob in one request.
    type: int
    default: 0
  store:
    description:
      - Directory of the image store on the managed host.
    type: path
    default: /var/lib/lapis
extends_documentation_fragment:
  - lapis.layers.attributes
  - lapis.layers.registry
attributes:
  check_mode:
    support: full
    details: The registry is asked which manifest the destination names; nothing is uploaded.
  diff_mode:
    support: full
    details: Shows the manifest digest the destination named before and after.
  idempotent:
    support: full
  platform:
    platforms: posix
notes:
  - An archive written to O(path) holds exactly one image; a second image written to the same
    file replaces the first. An OCI layout directory collects several.
  - A chunked upload that breaks off is not resumed; the push fails and can simply be run
    again (blobs that arrived are then skipped).
  - Credential helpers (C(credsStore), C(credHelpers) in the auth file) are not run; give
    O(username) and O(password) for such registries.
seealso:
  - module: lapis.layers.image
  - module: lapis.layers.image_info
"""

EXAMPLES = r"""
- name: Push the locally built web image to the team registry
  lapis.layers.image_push:
    name: web:2024.06
    dest: registry.example.com/team/web:2024.06
    username: deploy
    password: "{{ registry_token }}"
    mount_from:
      - team/base

- name: Write the web image as a docker-archive for docker load
  lapis.layers.image_push:
    name: web:2024.06
    path: /srv/export/web-2024.06.tar
    format: docker-archive

- name: Push to a registry with a private CA, credentials from podman login
  lapis.layers.image_push:
    name: registry.internal:5000/tools/busybox:1.36
    ca_path: /etc/pki/internal-ca.pem
"""

RETURN = r"""
reference:
  description: The normalised destination reference (with O(path), the name given there).
  returned: always
  type: str
  sample: registry.example.com/team/web:2024.06
digest:
  description: Digest of the manifest pushed (or that would be pushed, in check mode).
  returned: always
  type: str
  sample: sha256:2bfd9dafcdb18e82e86b6a2360929b48ddda8af5d54bfd37fd70e01a1bc70afb
previous_digest:
  description: Digest of the manifest the destination named before, or null.
  returned: always
  type: str
  sample: null
blobs:
  description: What happened to each blob of the image, by digest
    (C(exists), C(mounted), C(uploaded) or C(chunked); C(written) with O(path)). Empty
    when nothing was pushed.
  returned: always
  type: dict
  sample: {"sha256:affda64aa7257a566c8f27ba4bf30527f115ca96633d84e457aef44b65d8ac8f": uploaded}
bytes:
  description: Bytes of blob content uploaded.
  returned: always
  type: int
  sample: 1093522
actions:
  description: The transfers this run made (or would make, in check mode).
  returned: always
  type: list
  elements: str
  sample: ["push web:2024.06 (sha256:2bfd...) to registry.example.com/team/web:2024.06"]
path:
  description: The path written to.
  returned: when O(path) is given
  type: str
  sample: /srv/export/web-2024.06.tar
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.lapis.layers.plugins.module_utils.image_export import (
    ExportError,
    export_image,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import ManifestError
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store, StoreError
from ansible_collections.lapis.layers.plugins.module_utils.registry_spec import (
    REGISTRY_ARGUMENT_SPEC,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_store import (
    push_from_store,
    registry_options,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_transport import (
    RegistryError,
)

ERRORS = (RegistryError, StoreError, ManifestError, ExportError, ValueError, OSError)


def write_to_path(module: AnsibleModule) -> dict:
    """``path``: write the image as an OCI layout or archive; the module's result."""
    p = module.params
    done = export_image(
        Store(p["store"]),
        p["name"],
        p["path"],
        p["format"],
        ref_name=p["dest"],
        check_mode=module.check_mode,
    )
    return {
        "changed": done.changed,
        "reference": done.ref_name,
        "path": done.path,
        "digest": done.digest,
        "previous_digest": done.previous_digest,
        "blobs": dict.fromkeys(done.blobs, "written") if done.changed else {},
        "bytes": 0,
        "actions": done.actions,
        "diff": {
            "before": {"path": done.path, "digest": done.previous_digest},
            "after": {"path": done.path, "digest": done.digest},
        },
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "dest": {"type": "str"},
            "mount_from": {"type": "list", "elements": "str", "default": []},
            "chunk_size": {"type": "int", "default": 0},
            "path": {"type": "path"},
            "format": {
                "type": "str",
                "default": "oci",
                "choices": ["oci", "oci-archive", "docker-archive"],
            },
            "store": {"type": "path", "default": "/var/lib/lapis"},
            **REGISTRY_ARGUMENT_SPEC,
        },
        supports_check_mode=True,
    )
    p = module.params
    if p["path"]:
        try:
            module.exit_json(**write_to_path(module))
        except ERRORS as exc:
            module.fail_json(msg=f"image {p['name']}: {exc}")
    try:
        if p["chunk_size"] < 0:
            raise ValueError("chunk_size must be 0 (one request per blob) or a byte count")
        result = push_from_store(
            Store(p["store"]),
            p["name"],
            registry_options(p),
            dest=p["dest"],
            mount_from=p["mount_from"],
            chunk_size=p["chunk_size"],
            check_mode=module.check_mode,
        )
    except RegistryError as exc:
        module.fail_json(msg=f"image {p['name']}: push failed: {exc}", error_kind=exc.kind)
    except ERRORS as exc:
        module.fail_json(msg=f"image {p['name']}: {exc}")
    module.exit_json(
        changed=result.changed,
        reference=result.reference,
        digest=result.digest,
        previous_digest=result.previous_digest,
        blobs=result.blobs,
        bytes=result.bytes,
        actions=result.actions,
        diff={
            "before": {"reference": result.reference, "digest": result.previous_digest},
            "after": {"reference": result.reference, "digest": result.digest},
        },
    )


if __name__ == "__main__":
    main()
