#!/usr/bin/python
# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: image
short_description: Pull or import an image into the host's image store, or remove it
version_added: 0.1.0
description:
  - Pulls a container image from a registry over the OCI distribution API (no daemon), or
    imports one from an OCI image layout directory, an OCI archive or a docker-archive (as
    written by C(docker save) or C(skopeo copy ... docker-archive:)), into the image store of
    the managed host, and tags it with O(name).
  - A pull follows an image index to the manifest for the host's platform (or O(platform)),
    skips every blob the store already has, downloads the others in parallel and resumes a
    broken download with an HTTP C(Range) request where the registry allows it.
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
      - With O(source=registry) it is also what is pulled; V(NAME@sha256:...) pins the
        manifest digest exactly.
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
      - Where the image comes from.
      - V(registry) pulls O(name) from its registry. It is the default when O(path) is not
        given.
      - V(oci) is an OCI image layout directory, V(oci-archive) a tar of one,
        V(docker-archive) a C(docker save) tar (its layers may be uncompressed); these need
        O(path).
    type: str
    choices: [registry, oci, oci-archive, docker-archive]
  path:
    description:
      - Path of the layout directory or archive on the managed host, for the O(source) kinds
        other than V(registry).
    type: path
  pull:
    description:
      - With O(source=registry), V(missing) pulls only when the store lacks O(name) (or has it
        incomplete); no network request is made otherwise.
      - V(always) asks the registry which manifest the tag names now and pulls when it moved;
        the task changes only when the digest moved.
    type: str
    choices: [missing, always]
    default: missing
  platform:
    description:
      - With O(source=registry), the platform to pick from an image index, as
        V(OS/ARCH) or V(OS/ARCH/VARIANT) (V(linux/arm64), V(linux/arm/v7)). Default is the
        managed host's platform.
    type: str
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
  - lapis.layers.registry
attributes:
  check_mode:
    support: full
    details: The source is read (manifest and, for docker-archive, layer digests; for a
      registry, the manifest) but nothing is written to the store.
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
  - When the tagged manifest is an image index, the manifest for the host's platform is used.
  - A pull stores the platform manifest, not the registry's index, so pushing the image back
    sends a single-platform image.
  - A pull interrupted between runs starts over; only a download broken within one run is
    resumed (up to O(retries) times).
  - The registry options (O(username), O(auth_file), O(ca_path), O(insecure_registries),
    O(retries), O(parallel)) only matter with O(source=registry).
seealso:
  - module: lapis.layers.image_push
  - module: lapis.layers.image_info
  - module: lapis.layers.image_unpack
"""

EXAMPLES = r"""
- name: Pull alpine (docker.io/library/alpine:3.20) for this host's platform
  lapis.layers.image:
    name: alpine:3.20

- name: Pull from a private registry, following the tag when it moves
  lapis.layers.image:
    name: registry.example.com:5000/team/app:1.2
    pull: always
    username: deploy
    password: "{{ vault_registry_password }}"
    ca_path: /etc/pki/registry-ca.pem

- name: Pull the arm64 image of a multi-platform tag, pinned by digest
  lapis.layers.image:
    name: "registry.example.com/tools/busybox@sha256:\
      2bfd9dafcdb18e82e86b6a2360929b48ddda8af5d54bfd37fd70e01a1bc70afb"
    platform: linux/arm64
    auth_file: /root/.config/containers/auth.json

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
index_digest:
  description: Digest of the image index the registry's tag named, when it named one (the
    store keeps the platform manifest picked from it).
  returned: when O(source=registry) and the registry was asked
  type: str
  sample: sha256:9d1d5e6a0c8e5ba0f3a3e49c7e9a5a6a8f3d7b9c2e1f0a4b6c8d0e2f4a6b8c0d
platform:
  description: The platform picked from the index (empty when the tag named a manifest).
  returned: when O(source=registry)
  type: str
  sample: linux/amd64
actions:
  description: The transfers this run made (or would make, in check mode).
  returned: when O(source=registry)
  type: list
  elements: str
  sample:
    - pull registry.example.com/team/app@sha256:2bfd...
    - tag registry.example.com/team/app:1.2
transfer:
  description: What went over the network (or, in check mode, would go).
  returned: when O(source=registry)
  type: dict
  contains:
    blobs:
      description: Each config and layer digest mapped to V(fetched), V(present) (already
        in the store) or, in check mode, V(fetch).
      type: dict
      sample: {"sha256:affda64aa7257a566c8f27ba4bf30527f115ca96633d84e457aef44b65d8ac8f": fetched}
    bytes:
      description: Bytes downloaded.
      type: int
      sample: 2791213
    resumed:
      description: How often a broken download was resumed.
      type: int
      sample: 0
    fetch_seconds:
      description: Seconds spent downloading and verifying blobs.
      type: float
      sample: 0.412
    import_seconds:
      description: Seconds spent unpacking layers, checking diff_ids and tagging.
      type: float
      sample: 0.318
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.lapis.layers.plugins.module_utils.image_import import (
    SOURCES,
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
from ansible_collections.lapis.layers.plugins.module_utils.registry_spec import (
    REGISTRY_ARGUMENT_SPEC,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_store import (
    image_from_registry,
)
from ansible_collections.lapis.layers.plugins.module_utils.registry_transport import (
    RegistryError,
)

ERRORS = (InvalidReference, SourceError, StoreError, ManifestError, OSError, ValueError)


def import_local(module: AnsibleModule, store: Store, reference: str) -> dict:
    """Import from a layout or archive unless the tag already names that image."""
    p = module.params
    source = open_source(p["source"], p["path"], p["source_ref"])
    try:
        result = import_image(store, reference, source, p["force"], module.check_mode)
    finally:
        source.close()
    return {"changed": result.changed, **result.to_dict()}


def ensure_present(module: AnsibleModule, store: Store, reference: str) -> dict:
    """Pull or import the image unless the tag names it; collect what a moved tag freed."""
    if module.params["source"] == "registry":
        result = image_from_registry(store, reference, module.params, module.check_mode)
    else:
        result = import_local(module, store, reference)
    removed_blobs: list = []
    removed_layers: list = []
    moved = result["previous_digest"] not in (None, result["manifest_digest"])
    if moved and not module.check_mode:
        gc = store.gc()
        removed_blobs, removed_layers = gc.blobs, gc.layers
    return {
        "diff": {
            "before": {"reference": reference, "manifest_digest": result["previous_digest"]},
            "after": {"reference": reference, "manifest_digest": result["manifest_digest"]},
        },
        "removed_blobs": removed_blobs,
        "removed_layers": removed_layers,
        **result,
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
            "source": {"type": "str", "choices": ["registry", *SOURCES]},
            "path": {"type": "path"},
            "source_ref": {"type": "str"},
            "force": {"type": "bool", "default": False},
            "store": {"type": "path", "default": "/var/lib/lapis"},
            "pull": {"type": "str", "default": "missing", "choices": ["missing", "always"]},
            "platform": {"type": "str"},
            **REGISTRY_ARGUMENT_SPEC,
        },
        required_if=[("source", kind, ("path",)) for kind in SOURCES],
        supports_check_mode=True,
    )
    name = module.params["name"]
    if module.params["source"] is None:
        if module.params["path"] and module.params["state"] == "present":
            module.fail_json(msg=f"image {name}: path needs source ({', '.join(SOURCES)})")
        module.params["source"] = "registry"
    elif module.params["source"] == "registry" and module.params["path"]:
        module.fail_json(msg=f"image {name}: path is not used with source=registry; drop it")
    store = Store(module.params["store"])
    try:
        reference = str(parse_image_ref(name))
        if module.params["state"] == "present":
            result = ensure_present(module, store, reference)
        else:
            result = ensure_absent(module, store, reference)
    except RegistryError as exc:
        module.fail_json(msg=f"image {name}: pull failed: {exc}", error_kind=exc.kind)
    except ERRORS as exc:
        module.fail_json(msg=f"image {name}: {exc}")
    for warning in store.warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
