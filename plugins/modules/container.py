#!/usr/bin/python
# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: container
short_description: Run a container from an image in the host's store through an OCI runtime
version_added: 0.1.0
description:
  - Runs a container from an image of the host's image store (see M(lapis.layers.image)). The
    image's layer directories become the lowerdirs of a kernel overlay mount, a fresh
    per-container upperdir takes every change, and an OCI runtime (runc, or crun where it
    works) runs the process from an OCI bundle whose C(config.json) this module writes and
    validates against the OCI runtime-spec schema. No Docker or Podman daemon is involved.
  - Each container lives in C(<store>/containers/<name>/) (bundle, C(rootfs/), C(upper/),
    C(work/), C(log), recorded configuration, exit code, and the C(chain-ids) file through
    which the store's garbage collection keeps the layers it uses).
  - A container that already matches the requested configuration is left alone; any
    difference (options, or the image's manifest digest) recreates it with a fresh upperdir,
    and RV(changed_fields) and the diff say which fields differ.
options:
  name:
    description:
      - Name of the container; 1 to 64 letters, digits, C(_), C(.) or C(-).
    type: str
    required: true
  state:
    description:
      - V(started) runs the container detached; it survives the end of the task. Its stdout
        and stderr go to the log file and its exit code is recorded when it ends.
      - V(stopped) sends the stop signal (the image's StopSignal, or SIGTERM), then SIGKILL
        after O(stop_timeout); the runtime state is deleted and the rootfs unmounted, the
        upperdir is kept. A missing container is created without being started.
      - V(absent) stops the container, deletes its runtime state, unmounts the overlay and
        removes its directory (the upperdir stays when O(keep_upper=true)).
      - V(run) runs a fresh container to completion and returns RV(rc), RV(stdout) and
        RV(stderr); a non-zero exit fails the task unless O(fail_on_error=false). It always
        reports a change.
    type: str
    choices: [started, stopped, absent, run]
    default: started
  image:
    description:
      - Image reference in the store, for example V(docker.io/library/busybox:latest) or
        V(busybox). Required to create a container; an existing container keeps its image
        when this is omitted.
    type: str
  command:
    description:
      - Arguments that replace the image's C(Cmd), as a list or a shell-quoted string.
    type: raw
  entrypoint:
    description:
      - Replaces the image's C(Entrypoint), as a list or a shell-quoted string. As with
        C(docker run --entrypoint), the image's C(Cmd) is then dropped; give O(command) too
        when arguments are needed. An empty list clears the entrypoint.
    type: raw
  env:
    description:
      - Environment variables added to (or overriding) the image's C(Env).
    type: dict
  workdir:
    description:
      - Working directory of the process (absolute); defaults to the image's C(WorkingDir) or C(/).
    type: str
  user:
    description:
      - User as V(name), V(uid), V(name:group) or V(uid:gid), resolved against the image's
        C(/etc/passwd) and C(/etc/group). A numeric uid the image does not list runs with gid
        0; an unknown name is an error. Defaults to the image's C(User), else root.
    type: str
  hostname:
    description:
      - Host name inside the container; defaults to O(name).
    type: str
  mounts:
    description:
      - Bind mounts of host paths into the container.
    type: list
    elements: dict
    default: []
    suboptions:
      source:
        description: Host path; it must exist.
        type: path
        required: true
      destination:
        description: Absolute path inside the container.
        type: str
        required: true
      read_only:
        description: Mount read-only.
        type: bool
        default: false
  read_only:
    description:
      - Mount the container's root filesystem read-only (bind mounts keep their own mode).
    type: bool
    default: false
  network:
    description:
      - V(none) gives the container its own network namespace with only the loopback interface.
      - V(host) shares the host's network namespace; the host's C(/etc/resolv.conf) and
        C(/etc/hosts) are bind-mounted read-only.
    type: str
    choices: [none, host]
    default: none
  memory:
    description:
      - Memory limit, in bytes or with a binary suffix (V(64m), V(1g)).
    type: str
  cpus:
    description:
      - CPU limit as a number of CPUs (V(0.5) is half a CPU), as a CFS quota per 100 ms.
    type: float
  pids_limit:
    description:
      - Maximum number of processes in the container.
    type: int
  capabilities:
    description:
      - Changes to the default capability set, the one Docker and Podman give a container
        (AUDIT_WRITE, CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, MKNOD, NET_BIND_SERVICE,
        NET_RAW, SETFCAP, SETGID, SETPCAP, SETUID, SYS_CHROOT).
    type: dict
    suboptions:
      add:
        description: Capabilities to add (V(NET_ADMIN) or V(CAP_NET_ADMIN); V(ALL) adds all).
        type: list
        elements: str
        default: []
      drop:
        description: Capabilities to drop (V(ALL) drops all, then O(capabilities.add) applies).
        type: list
        elements: str
        default: []
  no_new_privileges:
    description:
      - Set the process's no_new_privs bit, so setuid programs cannot gain privileges.
    type: bool
    default: true
  rlimits:
    description:
      - Resource limits as V(SOFT) or V(SOFT:HARD), keyed by name (V(nofile), V(nproc),
        V(core) ...). The default is C(nofile=1024:1024), lowered to the host's hard limit.
        A hard limit above this host's own hard limit is refused, since the runtime could
        not apply it.
    type: dict
  runtime:
    description:
      - The OCI runtime. V(auto) takes runc, then crun, from C(PATH); V(runc) or V(crun) by
        name; or the full path of a runtime binary.
    type: str
    default: auto
  monitor:
    description:
      - What watches a V(started) container after the task ends.
      - V(conmon) is the monitor Podman uses (Debian package conmon); it keeps the
        container's output in the log (Kubernetes log format) and records the exit code.
      - V(reaper) uses the runtime's own detached mode under a small process of this module
        that records the exit code; output goes to the log as written.
      - V(auto) takes conmon when it is installed, else the reaper.
    type: str
    choices: [auto, conmon, reaper]
    default: auto
  store:
    description:
      - The image store's root directory; containers live in its C(containers/) directory.
    type: path
    default: /var/lib/lapis
  stop_timeout:
    description:
      - Seconds to wait after the stop signal before SIGKILL.
    type: int
    default: 10
  timeout:
    description:
      - With O(state=run), kill the container and fail after this many seconds.
    type: float
  keep_upper:
    description:
      - With O(state=absent), keep the upperdir (the container's changes) in
        C(<store>/containers/<name>/upper).
    type: bool
    default: false
  recreate:
    description:
      - Allow replacing an existing container of this name that was created from another
        image. Without it that is an error, so a name clash never destroys a container.
    type: bool
    default: false
  fail_on_error:
    description:
      - With O(state=run), fail the task when the container exits non-zero.
    type: bool
    default: true
extends_documentation_fragment:
  - lapis.layers.attributes
  - lapis.layers.attributes.action
attributes:
  action:
    support: full
    details:
      The action plugin only runs Ansible's normal module execution with less garbage
      collection on the controller while the payload is built; the module runs on the host.
  check_mode:
    support: full
    details:
      - Reports the actions and the diff without acting. It does not mount the image, so an
        invalid user or a missing entrypoint is only found when the task runs for real.
      - An O(image) that is not in the store yet does not fail check mode; the container is
        planned as changed, with a warning, since an earlier task of the same check run
        (M(lapis.layers.image), M(lapis.layers.image_copy)) would have brought it.
  diff_mode:
    support: full
    details:
      - The diff holds the recorded and the requested configuration; RV(changed_fields)
        names the fields that differ.
  idempotent:
    support: partial
    details:
      - V(started), V(stopped) and V(absent) are idempotent. V(run) always runs the command.
  platform:
    support: full
    platforms: Linux
notes:
  - Must run as root (kernel overlay mounts, cgroups, namespaces). Rootless containers are
    not supported.
  - No seccomp profile, AppArmor or SELinux label is applied; the container is confined by
    namespaces, the capability set, no_new_privs and the masked and read-only C(/proc) and
    C(/sys) paths only.
  - Networks other than V(none) and V(host) (bridges, port publishing) are not supported.
  - The runtime's state lives in C(<store>/containers/.runtime), not on a tmpfs; after a
    reboot the next run of this module finds the containers stopped and starts them again.
  - A changed configuration is applied by removing the old container before the new one is
    prepared; if the new one then fails (for example its entrypoint is missing), the old
    one is gone.
seealso:
  - module: lapis.layers.container_info
  - module: lapis.layers.image
author:
  - lapis.layers contributors (@lapis-layers)
"""

EXAMPLES = r"""
- name: Run a command to completion and show its output
  lapis.layers.container:
    name: hello
    image: busybox
    state: run
    command: [sh, -c, "echo hello from $(hostname)"]
  register: hello

- name: Print it
  ansible.builtin.debug:
    var: hello.stdout

- name: Keep a small web server running, limited and read-only
  lapis.layers.container:
    name: web
    image: busybox
    command: httpd -f -p 8080 -h /srv
    network: host
    read_only: true
    memory: 64m
    cpus: 0.5
    pids_limit: 50
    user: "65534:65534"
    capabilities:
      drop: [ALL]
      add: [NET_BIND_SERVICE]
    mounts:
      - source: /srv/www
        destination: /srv
        read_only: true

- name: Stop it (SIGTERM, SIGKILL after 5 seconds)
  lapis.layers.container:
    name: web
    state: stopped
    stop_timeout: 5

- name: Remove it and its changes
  lapis.layers.container:
    name: web
    state: absent
"""

RETURN = r"""
container:
  description: The container after the task (see M(lapis.layers.container_info)).
  returned: always
  type: dict
  sample:
    name: web
    status: running
    pid: 4242
    exit_code: null
    image: docker.io/library/busybox:latest
    image_digest: sha256:3f2a9c1e5b7d8f0a4c6e2b9d1f3a5c7e9b0d2f4a6c8e1b3d5f7a9c0e2b4d6f8a
    created: "2026-01-02T10:00:00Z"
    started: "2026-01-02T10:00:01Z"
    monitor: conmon
    log_path: /var/lib/lapis/containers/web/log
actions:
  description: What the task did (or would do in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: [remove, prepare, start]
changed_fields:
  description: Configuration fields that differ from the recorded ones.
  returned: always
  type: list
  elements: str
  sample: [memory, command]
rc:
  description: Exit code of the container's process (128+N when killed by signal N).
  returned: when O(state=run) and not in check mode
  type: int
  sample: 0
stdout:
  description: Standard output of the process.
  returned: when O(state=run) and not in check mode
  type: str
  sample: "hello from hello\n"
stderr:
  description: Standard error of the process.
  returned: when O(state=run) and not in check mode
  type: str
  sample: ""
"""

from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.lapis.layers.plugins.module_utils import containers as ct
from ansible_collections.lapis.layers.plugins.module_utils import oci_runtime as rt
from ansible_collections.lapis.layers.plugins.module_utils import runtime_spec as rs

ARGUMENT_SPEC: dict[str, Any] = {
    "name": {"type": "str", "required": True},
    "state": {
        "type": "str",
        "choices": ["started", "stopped", "absent", "run"],
        "default": "started",
    },
    "image": {"type": "str"},
    "command": {"type": "raw"},
    "entrypoint": {"type": "raw"},
    "env": {"type": "dict"},
    "workdir": {"type": "str"},
    "user": {"type": "str"},
    "hostname": {"type": "str"},
    "mounts": {
        "type": "list",
        "elements": "dict",
        "default": [],
        "options": {
            "source": {"type": "path", "required": True},
            "destination": {"type": "str", "required": True},
            "read_only": {"type": "bool", "default": False},
        },
    },
    "read_only": {"type": "bool", "default": False},
    "network": {"type": "str", "choices": ["none", "host"], "default": "none"},
    "memory": {"type": "str"},
    "cpus": {"type": "float"},
    "pids_limit": {"type": "int"},
    "capabilities": {
        "type": "dict",
        "options": {
            "add": {"type": "list", "elements": "str", "default": []},
            "drop": {"type": "list", "elements": "str", "default": []},
        },
    },
    "no_new_privileges": {"type": "bool", "default": True},
    "rlimits": {"type": "dict"},
    "runtime": {"type": "str", "default": "auto"},
    "monitor": {"type": "str", "choices": ["auto", "conmon", "reaper"], "default": "auto"},
    "store": {"type": "path", "default": ct.DEFAULT_STORE},
    "stop_timeout": {"type": "int", "default": 10},
    "timeout": {"type": "float"},
    "keep_upper": {"type": "bool", "default": False},
    "recreate": {"type": "bool", "default": False},
    "fail_on_error": {"type": "bool", "default": True},
}


def options_from(params: dict[str, Any]) -> rs.ContainerOptions:
    """ContainerOptions from the module parameters (raises RuntimeSpecError on bad values)."""
    caps = params["capabilities"] or {}
    return rs.ContainerOptions(
        command=rs.split_command(params["command"], "command"),
        entrypoint=rs.split_command(params["entrypoint"], "entrypoint"),
        env={str(k): str(v) for k, v in (params["env"] or {}).items()},
        workdir=params["workdir"],
        user=params["user"],
        hostname=params["hostname"],
        mounts=[
            rs.BindMount(m["source"], m["destination"], m["read_only"]) for m in params["mounts"]
        ],
        read_only=params["read_only"],
        network=params["network"],
        memory=rs.parse_size(params["memory"]) if params["memory"] else None,
        cpus=params["cpus"],
        pids_limit=params["pids_limit"],
        cap_add=list(caps.get("add") or []),
        cap_drop=list(caps.get("drop") or []),
        no_new_privileges=params["no_new_privileges"],
        rlimits={
            rs.normalize_rlimit_name(k): rs.parse_rlimit(k, v)
            for k, v in (params["rlimits"] or {}).items()
        },
    )


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    if rs.JSONSCHEMA_IMPORT_ERROR is not None:
        module.fail_json(
            msg=missing_required_lib("jsonschema"), exception=str(rs.JSONSCHEMA_IMPORT_ERROR)
        )
    for mount in params["mounts"]:
        if params["state"] in ("started", "run") and not Path(mount["source"]).exists():
            module.fail_json(
                msg=f"Bind mount source {mount['source']} does not exist on this host; "
                "create it first or fix the path."
            )
    try:
        request = ct.ContainerRequest(
            name=params["name"],
            state=params["state"],
            image=params["image"],
            options=options_from(params),
            runtime=params["runtime"],
            monitor=params["monitor"],
            stop_timeout=params["stop_timeout"],
            keep_upper=params["keep_upper"],
            recreate=params["recreate"],
            run_timeout=params["timeout"],
        )
        images = ct.StoreImages(params["store"])
        result = ct.ensure(request, params["store"], images, check_mode=module.check_mode)
    except (ct.ContainerError, rs.RuntimeSpecError, rt.OCIRuntimeError) as exc:
        extra = getattr(exc, "result", {}) or {}
        for key in ("cmd", "rc", "stdout", "stderr"):
            if getattr(exc, key, None):
                extra.setdefault(key, getattr(exc, key))
        module.fail_json(msg=str(exc), **extra)
    for warning in result.pop("warnings", []):
        module.warn(warning)
    if not module._diff:
        result.pop("diff", None)
    if params["state"] == "run" and result.get("rc"):
        if params["fail_on_error"]:
            module.fail_json(
                msg=f"Container {params['name']} exited with code {result['rc']}.", **result
            )
        result["failed"] = False  # a non-zero rc alone would make Ansible fail the task
    module.exit_json(**result)


if __name__ == "__main__":
    main()
