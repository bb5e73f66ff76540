#!/usr/bin/python
# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: image_build
short_description: Build an image from a Dockerfile into the host's image store
version_added: 0.1.0
description:
  - Builds a Dockerfile on the managed host, layer by layer, into the image store, and tags
    the result with O(name). No daemon and no buildah are involved. The base image's layers
    become kernel overlay lower directories, each C(RUN) runs in the OCI runtime (runc) over
    a fresh upper directory, and the upper becomes the step's layer (overlay whiteouts turned
    into OCI C(.wh.) entries and C(.wh..wh..opq) markers). C(COPY) and C(ADD) write their
    layer through the same kind of mount; config-only instructions add an empty-layer
    history entry.
  - The result is a normal OCI image (manifest, config with history and diff_ids, compressed
    layers) that C(lapis.layers.container) runs and C(skopeo) or C(lapis.layers.image_push)
    export.
  - The Dockerfile language is parsed in full (directives, heredocs, variable substitution,
    multi-stage builds, build args); see the collection's C(docs/dockerfile.md) for what is
    executed and the known gaps.
  - Every step has a cache key over its parent chain, the instruction after substitution, the
    build args it uses and the content and metadata of the files it reads. A rebuild with
    nothing changed runs no C(RUN) step and gives the same image digest; changing one C(COPY)
    source rebuilds from that step on.
author:
  - Lapis Layers Developers (@lapis-layers)
options:
  name:
    description:
      - Reference the built image is tagged with, for example V(localhost/app:1).
    type: str
    required: true
  path:
    description:
      - The build context, a directory on the managed host. C(COPY) and C(ADD) read from it,
        C(.dockerignore) (or C(<Dockerfile>.dockerignore)) in it is respected.
      - Required unless O(dockerfile_content) is given (an empty context is used then).
    type: path
  dockerfile:
    description:
      - Path of the Dockerfile. A relative path is taken inside O(path).
      - Defaults to C(Dockerfile) in O(path). Mutually exclusive with O(dockerfile_content).
    type: path
  dockerfile_content:
    description:
      - The Dockerfile text itself, instead of a file.
    type: str
  build_args:
    description:
      - Values for the Dockerfile's C(ARG)s (C(--build-arg)). Proxy args (C(HTTP_PROXY), ...)
        reach C(RUN) without being declared and stay out of the cache key and the image.
    type: dict
    default: {}
  target:
    description:
      - The stage to build (C(FROM ... AS name)); only the stages it needs are built.
      - Defaults to the last stage.
    type: str
  labels:
    description:
      - Labels added to the image config (as C(buildah bud --label) does).
    type: dict
    default: {}
  cache:
    description:
      - Use the build cache. With V(false) every step runs again (and the image gets new
        history timestamps unless O(source_date_epoch) is set); results are still recorded.
    type: bool
    default: true
  source_date_epoch:
    description:
      - Seconds since the epoch. When set, history and config timestamps are this time, tar
        entries' mtimes are clamped to it, tar entries are sorted and the compressed streams
        have fixed headers, so the same inputs give byte-identical image digests in any
        directory and on any host.
    type: int
  layer_compression:
    description:
      - Compression of the layers this build writes.
    type: str
    choices: [gzip, zstd, none]
    default: gzip
  pull:
    description:
      - What to do when a base image (C(FROM), C(COPY --from=IMAGE), C(RUN --mount=from=IMAGE))
        is not in the store.
      - V(missing) pulls it from its registry first, exactly as M(lapis.layers.image) with
        O(lapis.layers.image#module:source=registry) does (digest checks, layers unpacked); the
        registry options below apply to that pull. A base already in the store is used as it
        is, never re-resolved.
      - V(never) fails with a message naming the missing image.
    type: str
    choices: [missing, never]
    default: missing
extends_documentation_fragment:
  - lapis.layers.attributes
  - lapis.layers.attributes.action
  - lapis.layers.store
  - lapis.layers.registry
attributes:
  action:
    support: full
    details:
      The action plugin only runs Ansible's normal module execution with less garbage
      collection on the controller while the payload is built; the module runs on the host.
  check_mode:
    support: partial
    details:
      - Plans the build and walks the cache without running a C(RUN) step or writing
        anything. When every step is cached it computes the image digest and reports whether
        the tag would change exactly.
      - When a step is not cached its result cannot be known without running it; check mode
        then reports V(changed=true) (the tag would most likely move), RV(digest) null and the
        step as V(would build).
      - An C(ADD) of a URL without C(--checksum) counts as not cached in check mode (its
        content is only known after downloading it).
      - A base image that would be pulled is resolved at its registry (an unknown tag or bad
        credentials fail in check mode too) but not fetched; check mode then reports
        V(changed=true), RV(digest) null and a V(would pull) step, as nothing after C(FROM) can
        be known without the base.
  diff_mode:
    support: full
    details: Shows the digest the tag names before and after.
  idempotent:
    support: full
    details: A second run with the same inputs finds every step in the cache and gives the
      same digest (V(changed=false)). With O(cache=false) and no O(source_date_epoch) new
      timestamps make a new digest.
  platform:
    support: full
    platforms: Linux
notes:
  - Runs as root on the managed host; needs kernel overlayfs and an OCI runtime (runc).
  - C(FROM) images must be in the store (C(lapis.layers.image)); the build does not pull.
  - C(RUN) with the default network shares the host's network (there is no bridge);
    C(--network=none) gets an isolated network namespace.
  - Not supported, and refused with a clear error or documented as different, see
    C(docs/dockerfile.md) - C(RUN --mount=type=secret|ssh), C(ADD <git URL>),
    C(--security=insecure), C(--platform) other than the host's, and C(COPY --link) (copied
    as a normal COPY - same files, but the layer depends on the layers below).
  - Build cache records live in C(<store>/build/cache) and are not pruned; a record whose
    layer garbage collection removed is ignored. C(RUN --mount=type=cache) directories live
    in C(<store>/build/cache-mounts).
seealso:
  - module: lapis.layers.image
  - module: lapis.layers.container
"""

EXAMPLES = r"""
- name: Build the app image from the context in /srv/app
  lapis.layers.image_build:
    name: localhost/app:1
    path: /srv/app
    build_args:
      VERSION: "1.2"

- name: Build a stage reproducibly, with zstd layers
  lapis.layers.image_build:
    name: localhost/app-tools:1
    path: /srv/app
    dockerfile: docker/Dockerfile.tools
    target: tools
    source_date_epoch: 1700000000
    layer_compression: zstd

- name: Inline Dockerfile on top of an imported busybox
  lapis.layers.image_build:
    name: localhost/hello:1
    dockerfile_content: |
      FROM localhost/busybox:1
      RUN echo hello > /hello.txt
      CMD ["cat", "/hello.txt"]
"""

RETURN = r"""
reference:
  description: The normalised reference the image was tagged with.
  returned: always
  type: str
  sample: localhost/app:1
digest:
  description: Manifest digest of the built image (null in check mode when a step is not
    cached).
  returned: always
  type: str
  sample: sha256:a10277dc4bf322bac9fe78bb45de6862fa8073e1324086bf2f94b36864605df1
config_digest:
  description: Digest of the image config.
  returned: when RV(digest) is known
  type: str
  sample: sha256:435f614506f99abf1d48d0449ae3f9748941a283aef0256dc8bb9469a7a5c2f4
previous_digest:
  description: Digest the tag named before, or null.
  returned: always
  type: str
  sample: null
steps:
  description: One entry per executed instruction of the needed stages, in order.
  returned: always
  type: list
  elements: dict
  contains:
    stage:
      description: Index of the stage.
      type: int
    instruction:
      description: The instruction after substitution, as in the image history.
      type: str
    status:
      description: V(cached), V(built), V(pulled) (a base image fetched first; its RV(steps[].layer)
        is then the manifest digest and RV(steps[].size) the bytes downloaded) or, in check
        mode, V(would build) and V(would pull).
      type: str
    layer:
      description: Digest of the layer blob (null for config-only steps).
      type: str
    size:
      description: Size of the layer blob in bytes.
      type: int
    seconds:
      description: Wall time of the step.
      type: float
  sample:
    - {stage: 0, instruction: "RUN /bin/sh -c make", status: built,
       layer: "sha256:d1bc...", size: 220, seconds: 0.41}
output:
  description: What each RUN step that ran printed (stdout then stderr, last 64 KiB).
  returned: always
  type: list
  elements: dict
  sample:
    - {instruction: "RUN /bin/sh -c echo hi", output: "hi\n"}
"""

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.lapis.layers.plugins.module_utils.build_copy import CopyError
from ansible_collections.lapis.layers.plugins.module_utils.build_executor import (
    BuildError,
    BuildRequest,
    build_image,
)
from ansible_collections.lapis.layers.plugins.module_utils.build_layer import LayerBuildError
from ansible_collections.lapis.layers.plugins.module_utils.build_rootfs import RootfsError
from ansible_collections.lapis.layers.plugins.module_utils.build_run import RunError
from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_context import (
    ContextError,
)
from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_parser import (
    DockerfileError,
    decode_dockerfile,
)
from ansible_collections.lapis.layers.plugins.module_utils.image_import import SourceError
from ansible_collections.lapis.layers.plugins.module_utils.oci_manifest import ManifestError
from ansible_collections.lapis.layers.plugins.module_utils.oci_refs import (
    InvalidReference,
    parse_image_ref,
)
from ansible_collections.lapis.layers.plugins.module_utils.oci_runtime import OCIRuntimeError
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import StoreError
from ansible_collections.lapis.layers.plugins.module_utils.registry_spec import (
    REGISTRY_ARGUMENT_SPEC,
    registry_params,
)

ERRORS = (
    BuildError,
    CopyError,
    LayerBuildError,
    RootfsError,
    DockerfileError,
    ContextError,
    SourceError,
    ManifestError,
    InvalidReference,
    OCIRuntimeError,
    StoreError,
    OSError,
    ValueError,
)


def read_request(module: AnsibleModule) -> BuildRequest:
    """The build request from the module's parameters (Dockerfile read and decoded)."""
    p = module.params
    context = p["path"]
    if p["dockerfile_content"] is not None:
        text = p["dockerfile_content"]
        dockerfile_path = None
        display = "Dockerfile"
    else:
        dockerfile = Path(p["dockerfile"] or "Dockerfile")
        if not dockerfile.is_absolute():
            dockerfile = Path(context) / dockerfile
        display = str(dockerfile)
        text = decode_dockerfile(dockerfile.read_bytes(), display)
        dockerfile_path = str(dockerfile)
    if context is None:
        context = str(Path(p["store"]) / "build" / "empty-context")
        Path(context).mkdir(mode=0o700, parents=True, exist_ok=True)
    return BuildRequest(
        store=p["store"],
        context=context,
        dockerfile_text=text,
        dockerfile_name=display,
        dockerfile_path=dockerfile_path,
        name=str(parse_image_ref(p["name"])),
        build_args={str(k): str(v) for k, v in p["build_args"].items()},
        target=p["target"],
        labels={str(k): str(v) for k, v in p["labels"].items()},
        cache=p["cache"],
        source_date_epoch=p["source_date_epoch"],
        compression=p["layer_compression"],
        check_mode=module.check_mode,
        pull=p["pull"],
        registry=registry_params(p),
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "path": {"type": "path"},
            "dockerfile": {"type": "path"},
            "dockerfile_content": {"type": "str"},
            "build_args": {"type": "dict", "default": {}},
            "target": {"type": "str"},
            "labels": {"type": "dict", "default": {}},
            "cache": {"type": "bool", "default": True},
            "source_date_epoch": {"type": "int"},
            "layer_compression": {
                "type": "str",
                "default": "gzip",
                "choices": ["gzip", "zstd", "none"],
            },
            "store": {"type": "path", "default": "/var/lib/lapis"},
            "pull": {"type": "str", "default": "missing", "choices": ["missing", "never"]},
            **REGISTRY_ARGUMENT_SPEC,
        },
        mutually_exclusive=[("dockerfile", "dockerfile_content")],
        required_one_of=[("path", "dockerfile_content")],
        supports_check_mode=True,
    )
    name = module.params["name"]
    try:
        request = read_request(module)
        result = build_image(request)
    except RunError as exc:
        module.fail_json(msg=f"image_build {name}: {exc}", rc=exc.rc, output=exc.output)
    except ERRORS as exc:
        module.fail_json(msg=f"image_build {name}: {exc}")
    for warning in result.warnings:
        module.warn(warning)
    module.exit_json(
        diff={
            "before": {"reference": result.reference, "digest": result.previous_digest},
            "after": {"reference": result.reference, "digest": result.digest},
        },
        **result.to_dict(),
    )


if __name__ == "__main__":
    main()
