#!/usr/bin/python
# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: container_info
short_description: List the containers of a host's store with their state and log
version_added: 0.1.0
description:
  - Lists the containers that M(lapis.layers.container) created in a store, with their
    status (from the OCI runtime), pid, exit code, image, timestamps and the last lines of
    their log.
options:
  name:
    description:
      - Only this container. When it does not exist the result holds one entry with
        RV(containers[].status=absent).
    type: str
  store:
    description:
      - The image store's root directory.
    type: path
    default: /var/lib/lapis
  log_lines:
    description:
      - How many of the last log lines to return per container (V(0) for none).
    type: int
    default: 10
  runtime:
    description:
      - The OCI runtime to ask for the containers' state; see M(lapis.layers.container).
    type: str
    default: auto
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
notes:
  - Output written by a container under conmon is stored in the Kubernetes log format;
    RV(containers[].log_lines) has the timestamps and stream names removed.
seealso:
  - module: lapis.layers.container
author:
  - lapis.layers contributors (@lapis-layers)
"""

EXAMPLES = r"""
- name: List every container of the default store
  lapis.layers.container_info:
  register: found

- name: Show the running ones
  ansible.builtin.debug:
    msg: "{{ found.containers | selectattr('status', 'eq', 'running') | map(attribute='name') }}"

- name: Last 50 log lines of one container
  lapis.layers.container_info:
    name: web
    log_lines: 50
  register: web

- name: Print them
  ansible.builtin.debug:
    var: web.containers[0].log_lines
"""

RETURN = r"""
containers:
  description: The containers, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Container name.
      type: str
    status:
      description:
        - V(running), V(paused), V(created) (prepared, process not started), V(exited)
          (ended or stopped), or V(absent).
      type: str
    pid:
      description: Host pid of the container's init process while it runs, else null.
      type: int
    exit_code:
      description: Exit code of the last run (128+N when killed by signal N), else null.
      type: int
    image:
      description: Image reference the container was created from.
      type: str
    image_digest:
      description: Manifest digest of that image.
      type: str
    chain_ids:
      description: Chain ids of the layer directories the container's overlay uses, bottom first.
      type: list
      elements: str
    created:
      description: When the container was prepared (UTC, ISO 8601).
      type: str
    started:
      description: When its process was last started, else null.
      type: str
    finished:
      description: When its process was last seen ending, else null.
      type: str
    monitor:
      description: V(conmon), V(reaper), or V(none) for a container run to completion.
      type: str
    runtime:
      description: Path of the OCI runtime binary.
      type: str
    bundle:
      description: The OCI bundle directory (the container directory).
      type: str
    rootfs:
      description: Mount point of the container's overlay.
      type: str
    upperdir:
      description: The container's upperdir.
      type: str
    log_path:
      description: The log file.
      type: str
    log_lines:
      description: The last O(log_lines) lines of output.
      type: list
      elements: str
  sample:
    - name: web
      status: running
      pid: 4242
      exit_code: null
      image: docker.io/library/busybox:latest
      image_digest: sha256:3f2a9c1e5b7d8f0a4c6e2b9d1f3a5c7e9b0d2f4a6c8e1b3d5f7a9c0e2b4d6f8a
      chain_ids: [sha256:7c1b9d3f5a2e4c6b8d0f1a3c5e7b9d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1e3b]
      created: "2026-01-02T10:00:00Z"
      started: "2026-01-02T10:00:01Z"
      finished: null
      monitor: conmon
      runtime: /usr/sbin/runc
      bundle: /var/lib/lapis/containers/web
      rootfs: /var/lib/lapis/containers/web/rootfs
      upperdir: /var/lib/lapis/containers/web/upper
      log_path: /var/lib/lapis/containers/web/log
      log_lines: [listening on 8080]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.lapis.layers.plugins.module_utils import containers as ct


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str"},
            "store": {"type": "path", "default": ct.DEFAULT_STORE},
            "log_lines": {"type": "int", "default": 10},
            "runtime": {"type": "str", "default": "auto"},
        },
        supports_check_mode=True,
    )
    params = module.params
    try:
        containers = ct.info(
            params["store"], params["name"], params["runtime"], params["log_lines"]
        )
    except ct.ContainerError as exc:
        module.fail_json(msg=str(exc), **exc.result)
    module.exit_json(changed=False, containers=containers)


if __name__ == "__main__":
    main()
