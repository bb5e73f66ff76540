#!/usr/bin/python
# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: image_copy
short_description: Copy an image from the controller to hosts' stores, sending only missing blobs
version_added: 0.1.0
description:
  - Copies a container image from the controller into the image store of each managed host
    without a registry. The source is an OCI image layout, an OCI archive or a docker-archive
    on the controller, or an image of the controller's own image store.
  - The host is asked first which blobs its store already holds; only the missing ones are
    sent, in chunks of O(chunk_size), over the task's connection (SSH, local ...). Hosts
    that already have an image's base layers receive only the new layers.
  - A transfer cut short (a lost connection, a failed task) leaves the chunks that arrived in
    C(<store>/incoming/) on the host; the next run sends only the remaining chunks.
  - On the host every blob is checked against its size and digest, every layer against the
    diff_id in the image config and unpacked into the layer cache, and only then is O(name)
    tagged, as M(lapis.layers.image) does for a local import. A failed commit removes what it
    added. When the tag moves to another image, what the old image alone used is
    garbage-collected.
  - This is an action plugin with a module part on the host; the options O(mode),
    O(manifest), O(media_type), O(blobs) and O(staging_owner) are what the action plugin
    passes to that part and are not meant to be set in a task.
author:
  - Lapis Layers Developers (@lapis-layers)
options:
  src:
    description:
      - The image on the controller. A path (relative paths are searched like
        M(ansible.builtin.copy) searches its O(ansible.builtin.copy#module:src)) of an OCI
        layout directory, an OCI archive or a docker-archive, or with O(source=store) a
        reference in the controller's store.
      - Required; the action plugin checks it (the part that runs on the host does not use it).
    type: str
  source:
    description:
      - What O(src) is. V(auto) looks at the path (a directory with C(oci-layout), a tar with
        C(oci-layout) or with C(manifest.json)); when no such path exists on the controller
        and O(src) is an image reference, it is taken from the controller's store.
    type: str
    choices: [auto, oci, oci-archive, docker-archive, store]
    default: auto
  source_ref:
    description:
      - Which image of a layout or archive that holds several (see M(lapis.layers.image)).
    type: str
  name:
    description:
      - Reference under which the image is stored on the host, for example V(web:2024.06).
    type: str
    required: true
  controller_store:
    description:
      - The controller's image store, read with O(source=store).
    type: path
    default: /var/lib/lapis
  chunk_size:
    description:
      - Size of the pieces a blob is sent in, in bytes or with a binary suffix (V(8m)). An
        interrupted copy resumes at the first chunk that did not arrive in full.
      - Changing it between runs discards chunks staged with the old size.
    type: str
    default: 32m
  mode:
    description:
      - Set by the action plugin. V(inventory) reports what the store holds; V(commit)
        ingests the staged blobs and imports the image.
    type: str
    choices: [inventory, commit]
    default: inventory
  manifest:
    description:
      - Set by the action plugin. The manifest to store, as JSON text.
    type: str
  media_type:
    description:
      - Set by the action plugin. The manifest's media type.
    type: str
  blobs:
    description:
      - Set by the action plugin. The config and layer blobs of the image.
    type: list
    elements: dict
    default: []
  staging_owner:
    description:
      - Set by the action plugin when the task escalates privileges. The login user that
        writes the chunks into the staging directories.
    type: str
extends_documentation_fragment:
  - lapis.layers.attributes
  - lapis.layers.attributes.action
  - lapis.layers.store
attributes:
  action:
    support: full
    details:
      The action plugin reads the image on the controller and sends each host only the
      blobs it lacks; the module part runs on the host.
  check_mode:
    support: full
    details: The host is asked what it has and RV(bytes_to_send) says what a real run
      would send; nothing is sent or written.
  diff_mode:
    support: full
    details: Shows the manifest digest the tag names before and after.
  idempotent:
    support: full
    details: A second run finds every blob on the host, sends nothing and reports no change.
  platform:
    platforms: posix
notes:
  - The source is read on the controller, so an image index picks the manifest of the
    controller's platform. Copy a single-platform image to hosts of another architecture.
  - Chunks are sent with the connection's file transfer (for SSH, sftp or scp as configured);
    each chunk is one transfer, so very small O(chunk_size) values cost time.
  - A blob the host's store already has is trusted to be intact, as with
    M(lapis.layers.image); use M(lapis.layers.image) with O(lapis.layers.image#module:force=true)
    to re-check a host's blobs.
  - Chunks staged by a copy that is never run again stay in C(<store>/incoming/); remove
    that directory to reclaim the space.
  - Two copies running at the same time to one host that both lack the same blob write the
    same chunk files; a commit may then find a chunk incomplete or corrupted and fail, and
    the next run sends what is missing. Copy to a host from one task at a time.
  - With privilege escalation the chunks are written by the login user into staging
    directories this module gives to that user; the commit runs as root and checks every
    byte against its digest.
seealso:
  - module: lapis.layers.image
  - module: lapis.layers.image_info
"""

EXAMPLES = r"""
- name: Copy the web image, built on the controller as an OCI layout, to every server
  lapis.layers.image_copy:
    src: /srv/build/web-oci
    source_ref: "2024.06"
    name: registry.example.com/web:2024.06

- name: Copy an image from the controller's own store
  lapis.layers.image_copy:
    src: docker.io/library/busybox:1.36
    source: store
    name: busybox:1.36
  register: copied

- name: Show what was sent
  ansible.builtin.debug:
    msg: "{{ copied.bytes_sent }} bytes sent, {{ copied.blobs_skipped | length }} blobs skipped"
"""

RETURN = r"""
reference:
  description: The full normalised reference of the image on the host.
  returned: always
  type: str
  sample: registry.example.com/web:2024.06
digest:
  description: Digest of the manifest that O(name) names now (or would name, in check mode).
  returned: always
  type: str
  sample: sha256:2bfd9dafcdb18e82e86b6a2360929b48ddda8af5d54bfd37fd70e01a1bc70afb
previous_digest:
  description: Digest of the manifest that O(name) named before, or null.
  returned: always
  type: str
  sample: null
bytes_sent:
  description: Bytes of blob data sent to the host by this run.
  returned: always
  type: int
  sample: 1048576
bytes_to_send:
  description: Bytes of blob data the host lacked when asked (what a check mode run would send).
  returned: always
  type: int
  sample: 1048576
blobs_sent:
  description: Digests of the blobs sent (in full or their remaining chunks).
  returned: always
  type: list
  elements: str
  sample: [sha256:affda64aa7257a566c8f27ba4bf30527f115ca96633d84e457aef44b65d8ac8f]
blobs_skipped:
  description: Digests of the blobs the host's store already had.
  returned: always
  type: list
  elements: str
  sample: [sha256:8897395fd26dc44ad0e2a834335b33198cb41ac4d98dfddf58eced3853fa7b17]
blobs_resumed:
  description: Digests of the blobs whose transfer an earlier run had begun; only their
    missing chunks were sent.
  returned: always
  type: list
  elements: str
  sample: []
bytes_resumed:
  description: Bytes of chunks an earlier run had already staged on the host.
  returned: always
  type: int
  sample: 0
chunks_sent:
  description: How many chunk files were sent.
  returned: always
  type: int
  sample: 2
layers_unpacked:
  description: Chain ids of the layers the host unpacked into its layer cache.
  returned: always
  type: list
  elements: str
  sample: []
removed_blobs:
  description: Digests of blobs garbage collection removed after the tag moved.
  returned: always
  type: list
  elements: str
  sample: []
removed_layers:
  description: Chain ids of layer directories garbage collection removed after the tag moved.
  returned: always
  type: list
  elements: str
  sample: []
source:
  description: What was read on the controller.
  returned: always
  type: str
  sample: oci /srv/build/web-oci
"""

import pwd
from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.lapis.layers.plugins.module_utils.image_copy import (
    CopyError,
    blob_refs,
    commit_copy,
    parse_chunk_size,
    prepare_staging,
    take_inventory,
)
from ansible_collections.lapis.layers.plugins.module_utils.image_import import SourceError
from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import (
    ManifestError,
    sha256_digest,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_refs import (
    InvalidReference,
    parse_image_ref,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store, StoreError

ARGUMENT_SPEC: dict[str, Any] = {
    "src": {"type": "str"},
    "source": {
        "type": "str",
        "default": "auto",
        "choices": ["auto", "oci", "oci-archive", "docker-archive", "store"],
    },
    "source_ref": {"type": "str"},
    "name": {"type": "str", "required": True},
    "controller_store": {"type": "path", "default": "/var/lib/lapis"},
    "chunk_size": {"type": "str", "default": "32m"},
    "store": {"type": "path", "default": "/var/lib/lapis"},
    "mode": {"type": "str", "default": "inventory", "choices": ["inventory", "commit"]},
    "manifest": {"type": "str"},
    "media_type": {"type": "str"},
    "blobs": {"type": "list", "elements": "dict", "default": []},
    "staging_owner": {"type": "str"},
}
ERRORS = (CopyError, InvalidReference, SourceError, StoreError, ManifestError, OSError, KeyError)


def owner_ids(user: str | None) -> tuple[int, int] | None:
    """(uid, gid) of the login user that writes the chunks, when it is not us."""
    if not user:
        return None
    entry = pwd.getpwnam(user)
    return None if entry.pw_uid == 0 else (entry.pw_uid, entry.pw_gid)


def inventory(
    module: AnsibleModule, store: Store, reference: str, chunk_size: int
) -> dict[str, Any]:
    """Step 1: what the store has; outside check mode, staging directories for the rest."""
    p = module.params
    blobs = blob_refs(p["blobs"])
    digest = sha256_digest((p["manifest"] or "").encode())
    found = take_inventory(store, reference, digest, blobs, chunk_size)
    missing = [b.digest for b in blobs if b.digest not in found.present]
    if missing and not module.check_mode:
        prepare_staging(store, missing, owner_ids(p["staging_owner"]))
    return {"changed": False, "inventory": found.to_dict()}


def commit(module: AnsibleModule, store: Store, reference: str, chunk_size: int) -> dict[str, Any]:
    """Step 3: ingest staged blobs, import the image, tag it."""
    p = module.params
    if not p["manifest"]:
        raise CopyError("mode=commit needs the manifest")
    done = commit_copy(
        store,
        reference,
        p["manifest"].encode(),
        p["media_type"],
        blob_refs(p["blobs"]),
        chunk_size=chunk_size,
    )
    return done.to_dict()


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    store = Store(p["store"])
    try:
        chunk_size = parse_chunk_size(p["chunk_size"])
        reference = str(parse_image_ref(p["name"]))
        if p["mode"] == "inventory":
            result = inventory(module, store, reference, chunk_size)
        elif module.check_mode:
            result = {"changed": True, "skipped_commit": True}
        else:
            result = commit(module, store, reference, chunk_size)
    except ERRORS as exc:
        module.fail_json(msg=f"image_copy {p['name']} to store {p['store']}: {exc}")
    for warning in store.warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
