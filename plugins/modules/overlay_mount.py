#!/usr/bin/python
# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: overlay_mount
short_description: Mount, persist, remount and remove Linux overlay file systems
version_added: 0.1.0
description:
  - Manages an overlay mount on O(path) made of read-only lower directories and,
    optionally, a writable upper directory with its work directory.
  - The overlay is mounted by the kernel's overlayfs or by the collection's own FUSE
    daemon (O(backend)), which writes the same on-disk format, so either can mount an
    upper directory the other one wrote.
  - Compares the wanted overlay with the live mount table (C(/proc/self/mountinfo)), that
    is the order of O(lowerdirs), O(upperdir), O(workdir) and the options.
  - Persists the overlay as an entry in O(fstab) (default C(/etc/fstab)); the file is
    replaced atomically, other lines and comments are kept as they are.
  - Checks the layers before mounting, so a failure names its cause (missing lower,
    upperdir and workdir on different file systems, workdir not empty or nested,
    upper file system without extended attributes or C(d_type), kernel without overlay).
  - A failed mount restores the previous fstab and removes the directories the module
    created.
options:
  path:
    description:
      - Absolute path of the mount point, where the merged view appears.
    type: path
    required: true
    aliases: [name]
  lowerdirs:
    description:
      - The lower directories, B(topmost first), exactly in the order of the kernel's
        C(lowerdir=) option. A file in an earlier directory hides the same path in a
        later one.
      - Required for O(state=mounted), O(state=ephemeral) and O(state=present).
      - Paths may contain commas, colons, backslashes and spaces; the module escapes them the way
        the kernel expects.
    type: list
    elements: path
  upperdir:
    description:
      - The writable upper directory, where new and changed files land and where
        whiteouts record deleted lower files.
      - Give it together with O(workdir), or leave both out for a read-only union of the
        lower directories.
    type: path
  workdir:
    description:
      - An empty directory on the same file system as O(upperdir), not inside it, that
        overlayfs uses to prepare files before moving them into the upper directory.
    type: path
  options:
    description:
      - Mount options, one per item.
      - Overlay options such as V(index=on), V(redirect_dir=on), V(metacopy=on),
        V(xino=auto), V(volatile) or V(userxattr) are fixed when the overlay is mounted.
      - Per-mount flags (V(ro), V(nosuid), V(nodev), V(noexec), V(noatime) and their
        opposites) can be changed on a mounted overlay by a remount.
      - fstab-only options (V(nofail), V(noauto), V(x-systemd.*)) are written to fstab
        and never given to the kernel.
      - Do not put C(lowerdir=), C(upperdir=) or C(workdir=) here.
    type: list
    elements: str
    default: []
  state:
    description:
      - V(mounted) mounts the overlay and persists it in O(fstab).
      - V(ephemeral) mounts the overlay without touching O(fstab).
      - V(present) only writes the O(fstab) entry.
      - V(unmounted) unmounts the overlay and leaves O(fstab) alone.
      - V(absent) unmounts the overlay and removes its O(fstab) entry. Directories are kept.
      - V(remounted) remounts a mounted overlay to apply per-mount flags; it always reports
        a change. With O(lowerdirs) given and other layers mounted it needs O(force).
    type: str
    choices: [mounted, ephemeral, present, unmounted, absent, remounted]
    default: mounted
  fstab:
    description:
      - The fstab file to change. Use a file of your own for tests, never the live one.
    type: path
    default: /etc/fstab
  backup:
    description:
      - Keep a time-stamped copy of O(fstab) beside it before changing it.
    type: bool
    default: false
  create_dirs:
    description:
      - Create O(path), O(upperdir) and O(workdir) (and their missing parents) when they
        do not exist. Lower directories are never created.
      - When the mount then fails, the directories created by this run are removed.
    type: bool
    default: true
  backend:
    description:
      - V(kernel) mounts the kernel's overlayfs.
      - V(fuse) mounts the collection's FUSE overlay (C(fuse.lapis-overlay)), written with
        pyfuse3. The module installs the daemon to C(/usr/local/lib/lapis-layers), a
        launcher C(/usr/local/bin/lapis-overlay) and the mount helper
        C(/sbin/mount.fuse.lapis-overlay) for the Python that runs it, so
        C(mount -t fuse.lapis-overlay) and fstab entries work. The daemon outlives the
        task and is found again by later runs through its state file in
        C(/run/lapis-layers/fuse-overlay).
      - V(auto) keeps the backend of an overlay already mounted on O(path); otherwise it
        uses the kernel when the kernel has overlayfs, the module runs as root and the
        layers pass the kernel's checks, and fuse when not. RV(backend_reason) says why.
    type: str
    choices: [kernel, fuse, auto]
    default: kernel
  logfile:
    description:
      - The file the FUSE daemon logs to (O(backend=fuse) only).
      - Defaults to C(/var/log/lapis-layers/fuse-overlay-<hash of path>.log); RV(fuse)
        names the file used.
    type: path
  force:
    description:
      - Allow unmounting and mounting again when the mounted overlay has other lower
        directories, another upperdir or workdir, or other overlay options.
      - The kernel ignores layer and overlay option changes on remount, so they can only
        be applied by a new mount. Processes using the mount point must let go first.
    type: bool
    default: false
extends_documentation_fragment:
  - lapis.layers.attributes
attributes:
  check_mode:
    support: full
    details:
      - Returns the same actions and diff that a real run would carry out. The layer
        checks that write a probe file (extended attribute support) are skipped.
  diff_mode:
    support: full
    details:
      - Shows the fstab entry and the mount options before and after.
  idempotent:
    support: full
    details:
      - State V(remounted) always reports a change.
  platform:
    support: full
    platforms: Linux (overlayfs)
notes:
  - With O(backend=kernel), FUSE overlays on O(path) are refused like any other foreign
    mount. With O(backend=fuse), a C(fuse-overlayfs) mount on O(path) counts as an overlay
    with unknown layers, so only O(force=true) replaces it.
  - The fuse backend accepts the overlay options V(userxattr) and V(volatile) and the
    per-mount flags; other overlay options (V(index=on), V(redirect_dir=on),
    V(metacopy=on) ...) are refused. Without V(redirect_dir), renaming a directory that
    has lower parts fails with C(EXDEV), as in the kernel; C(mv) then copies.
  - The fuse backend's layers are read from the daemon's state file, not from the mount
    table. A fuse overlay whose daemon was killed shows as C(fuse.lapis-overlay) with
    unknown layers; unmount it (O(state=unmounted)) and mount it again.
  - The kernel does not show every option in the mount table. Options it hides when
    they are at their default, or drops when they are useless (V(xino=on) on a single
    file system, V(uuid)), cannot be compared and are taken as in effect.
  - The kernel chooses the default of V(index), V(metacopy), V(nfs_export) and
    V(redirect_dir) from the overlay module parameters; the module reads them from
    C(/sys/module/overlay/parameters).
  - The upper file system is probed for extended attributes and C(d_type) by writing a
    file and a directory into the workdir (removed at once); check mode skips the probe.
  - When the kernel refuses a mount for a reason not checked beforehand, the module asks
    the kernel through the mount API (C(fsopen)/C(fsconfig), Linux 5.2+) and reports its
    message; older kernels only give mount(8)'s generic text.
  - When the new mount of a forced re-mount fails, the module mounts the previous layers
    again from what the mount table showed; options the kernel did not show are not
    restored.
seealso:
  - module: lapis.layers.overlay_info
  - module: ansible.posix.mount
  - name: Overlay Filesystem (kernel documentation)
    description: The kernel's description of overlayfs, its options and whiteouts.
    link: https://docs.kernel.org/filesystems/overlayfs.html
author:
  - lapis.layers contributors (@lapis-layers)
"""

EXAMPLES = r"""
- name: Mount two lower layers and an upper layer, persisted in /etc/fstab
  lapis.layers.overlay_mount:
    path: /srv/app/merged
    lowerdirs:
      - /srv/app/layers/config   # topmost lower
      - /srv/app/layers/base
    upperdir: /srv/app/upper
    workdir: /srv/app/work
    options: [index=on, nosuid]
    state: mounted

- name: Read-only union of two directories, not persisted
  lapis.layers.overlay_mount:
    path: /mnt/union
    lowerdirs: [/opt/site, /opt/vendor]
    state: ephemeral

- name: Swap in a new lower layer (only a new mount can apply it)
  lapis.layers.overlay_mount:
    path: /srv/app/merged
    lowerdirs: [/srv/app/layers/config-v2, /srv/app/layers/base]
    upperdir: /srv/app/upper
    workdir: /srv/app/work
    force: true

- name: Make a mounted overlay read-only without unmounting it
  lapis.layers.overlay_mount:
    path: /srv/app/merged
    lowerdirs: [/srv/app/layers/config-v2, /srv/app/layers/base]
    upperdir: /srv/app/upper
    workdir: /srv/app/work
    options: [ro]
    state: remounted

- name: The same union through the FUSE backend (for example where the kernel lacks overlayfs)
  lapis.layers.overlay_mount:
    path: /srv/app/merged
    lowerdirs: [/srv/app/layers/config, /srv/app/layers/base]
    upperdir: /srv/app/upper
    workdir: /srv/app/work
    backend: auto
    logfile: /var/log/app-overlay.log
  register: app_overlay   # app_overlay.backend and .backend_reason say which and why

- name: Unmount and forget the overlay, keeping a copy of the old fstab
  lapis.layers.overlay_mount:
    path: /srv/app/merged
    state: absent
    backup: true
"""

RETURN = r"""
actions:
  description:
    - The steps taken (or, in check mode, that would be taken), in order.
    - C(undo) is the command that puts a step back when a later step fails (the previous
      overlay's mount command for the unmount of a forced re-mount).
  returned: always
  type: list
  elements: dict
  sample:
    - action: write_fstab
      target: /etc/fstab
      command: []
      reason: entry added or changed
      undo: []
    - action: mount
      target: /srv/app/merged
      command: [mount, -t, overlay, -o, "lowerdir=/a:/b,upperdir=/u,workdir=/w", overlay, /srv/m]
      reason: ""
      undo: []
overlay:
  description:
    - The wanted overlay; null for O(state=unmounted) or O(state=absent) without O(lowerdirs).
  returned: always
  type: dict
  sample:
    path: /srv/app/merged
    lowerdirs: [/srv/app/layers/config, /srv/app/layers/base]
    upperdir: /srv/app/upper
    workdir: /srv/app/work
    options: [index=on]
    read_only_union: false
    mount_data: lowerdir=/srv/app/layers/config:/srv/app/layers/base,upperdir=/srv/app/upper,...
mount:
  description:
    - The overlay mounted on O(path) after the run, as M(lapis.layers.overlay_info) reports it;
      null when nothing is mounted there.
  returned: always
  type: dict
  sample:
    path: /srv/app/merged
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
path:
  description: The normalized mount point.
  returned: always
  type: str
  sample: /srv/app/merged
state:
  description:
    - The file type of the mount point (V(directory)) when it exists, not the state asked
      for. Ansible adds it, with C(owner), C(group), C(mode), C(uid), C(gid) and C(size), to
      every result that names an existing RV(path).
  returned: when the mount point exists
  type: str
  sample: directory
fstab:
  description: The fstab file that was read and, for some states, changed.
  returned: always
  type: str
  sample: /etc/fstab
backend:
  description: What mounts the overlay, V(kernel) or V(fuse) (the choice for O(backend=auto)).
  returned: always
  type: str
  sample: kernel
backend_reason:
  description: Why that backend was used.
  returned: always
  type: str
  sample: the kernel has overlayfs and the layers pass its checks
fuse:
  description:
    - The fuse backend's daemon and files, when the fuse backend was used.
    - C(installed) lists the daemon files written (or, in check mode, to be written).
    - C(daemon) has the C(pid), C(logfile) and C(started) time of the daemon serving
      O(path) after the run, or is null when none runs.
  returned: when the fuse backend was used
  type: dict
  sample:
    logfile: /var/log/lapis-layers/fuse-overlay-mnt-0123456789abcdef0123.log
    installed: []
    daemon:
      pid: 4242
      logfile: /var/log/lapis-layers/fuse-overlay-mnt-0123456789abcdef0123.log
      started: 1767225600.0
backup_file:
  description: The copy of O(fstab) made before it was changed.
  returned: when O(backup=true) and the fstab was changed
  type: str
  sample: /etc/fstab.20260101T120000.4242~
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.lapis.layers.plugins.module_utils.fuse_overlay.backend import (
    BACKENDS,
    FuseOverlay,
    daemon_info,
    install_daemon,
    select_backend,
)
from ansible_collections.lapis.layers.plugins.module_utils.overlay import OverlayError
from ansible_collections.lapis.layers.plugins.module_utils.overlay_executor import (
    CommandResult,
    KernelOverlay,
)
from ansible_collections.lapis.layers.plugins.module_utils.overlay_plan import STATES
from ansible_collections.lapis.layers.plugins.module_utils.overlay_state import (
    ensure_state,
    find_live,
    make_request,
)

ARGUMENT_SPEC = {
    "path": {"type": "path", "required": True, "aliases": ["name"]},
    "lowerdirs": {"type": "list", "elements": "path"},
    "upperdir": {"type": "path"},
    "workdir": {"type": "path"},
    "options": {"type": "list", "elements": "str", "default": []},
    "state": {"type": "str", "choices": list(STATES), "default": "mounted"},
    "fstab": {"type": "path", "default": "/etc/fstab"},
    "backup": {"type": "bool", "default": False},
    "create_dirs": {"type": "bool", "default": True},
    "force": {"type": "bool", "default": False},
    "backend": {"type": "str", "choices": list(BACKENDS), "default": "kernel"},
    "logfile": {"type": "path"},
}


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        supports_check_mode=True,
        required_together=[("upperdir", "workdir")],
        required_if=[
            ("state", "mounted", ("lowerdirs",)),
            ("state", "ephemeral", ("lowerdirs",)),
            ("state", "present", ("lowerdirs",)),
        ],
    )

    def run(argv: list[str]) -> CommandResult:
        rc, out, err = module.run_command(argv)
        return CommandResult(rc, out, err)

    mount_bin = module.get_bin_path("mount", True)
    kernel = KernelOverlay(mount_bin, module.get_bin_path("umount", True))
    fuse = FuseOverlay(mount_bin, logfile=module.params["logfile"])
    try:
        request = make_request(module.params)
        live = find_live(request.path)
        requested = module.params["backend"]
        backend, why = select_backend(
            requested, request.spec, live, module.check_mode, kernel=kernel, fuse=fuse
        )
        installed = install_daemon(module.check_mode) if backend is fuse else []
        result = ensure_state(request, backend, run, module.check_mode, module.params["backup"])
    except OverlayError as exc:
        module.fail_json(msg=exc.message(), **exc.details)
    result["backend_reason"] = why
    if backend is fuse:
        result["changed"] = result["changed"] or bool(installed)
        result["fuse"] = {
            "logfile": fuse.logfile_for(request.path),
            "installed": installed,
            "daemon": daemon_info(request.path),
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
