# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""OpenWrt extroot: gather facts over a busybox shell, plan shell commands, run them.

Nothing here needs Python on the router. The action plugin sends the gather
scripts below through the connection, hands their output to the parsers, asks
:func:`plan_present` or :func:`plan_absent` for a :class:`Plan` (a list of shell
commands and the fstab before/after), and runs the plan through
:func:`run_plan`, the one place where commands that change the router are run.
Check mode returns the same plan without running it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable

from ansible_collections.lapis.layers.plugins.module_utils import uci

WORKDIR = "/tmp/lapis-extroot"
FSTAB = "/etc/config/fstab"
STAGING = ".lapis-extroot-staging"
UUID_TAGS = (".extroot-uuid", "etc/.extroot-uuid", "upper/etc/.extroot-uuid")
MARK = "@@lapis-extroot:"
LINUX_FILESYSTEMS = ("ext2", "ext3", "ext4", "f2fs", "btrfs", "xfs")
MKFS = {"ext4": "mkfs.ext4", "f2fs": "mkfs.f2fs"}
PACKAGES = {
    "block": "block-mount",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.f2fs": "mkf2fs",
    "fs:ext4": "kmod-fs-ext4",
    "fs:f2fs": "kmod-fs-f2fs",
    "usb": "kmod-usb-storage",
}
UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
DEVICE_RE = re.compile(r"^/dev/[A-Za-z0-9_.:/+-]+$")
LABEL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,16}$")

ARGUMENT_SPEC: dict[str, Any] = {
    "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
    "device": {"type": "str"},
    "uuid": {"type": "str"},
    "label": {"type": "str"},
    "fstype": {"type": "str", "default": "ext4", "choices": ["ext4", "f2fs"]},
    "format": {"type": "bool", "default": False},
    "force": {"type": "bool", "default": False},
    "copy_overlay": {"type": "bool", "default": True},
    "target": {"type": "str", "default": "/overlay", "choices": ["/overlay", "/"]},
    "keep_rwm": {"type": "bool", "default": True},
    "reset_uuid_check": {"type": "bool", "default": False},
    "install_packages": {"type": "bool", "default": False},
    "reboot": {"type": "bool", "default": False},
    "reboot_timeout": {"type": "int", "default": 300},
}
MUTUALLY_EXCLUSIVE = [["device", "uuid"]]
REQUIRED_IF = [["state", "present", ["device", "uuid", "label"], True]]


class ExtrootError(Exception):
    """A failure the user can act on; the message names the object and the cause."""

    def __init__(self, msg: str, **details: Any) -> None:
        super().__init__(msg)
        self.details = details


@dataclass(frozen=True)
class Options:
    """The task's arguments, validated."""

    state: str = "present"
    device: str | None = None
    uuid: str | None = None
    label: str | None = None
    fstype: str = "ext4"
    format: bool = False
    force: bool = False
    copy_overlay: bool = True
    target: str = "/overlay"
    keep_rwm: bool = True
    reset_uuid_check: bool = False
    install_packages: bool = False
    reboot: bool = False
    reboot_timeout: int = 300

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Options:
        opts = cls(**{k: v for k, v in args.items() if k in ARGUMENT_SPEC and v is not None})
        if opts.device is not None and not DEVICE_RE.match(opts.device):
            raise ExtrootError(f"device '{opts.device}' is not a path under /dev")
        if opts.uuid is not None and not UUID_RE.match(opts.uuid):
            raise ExtrootError(f"uuid '{opts.uuid}' is not a filesystem UUID (8-4-4-4-12 hex)")
        if opts.label is not None and not LABEL_RE.match(opts.label):
            raise ExtrootError(
                f"label '{opts.label}' is not usable: 1-16 characters of letters, digits, . _ -"
            )
        if opts.reboot_timeout < 10:
            raise ExtrootError("reboot_timeout must be at least 10 seconds")
        return opts

    @property
    def format_label(self) -> str:
        return self.label or "extroot"


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str


@dataclass(frozen=True)
class BlockDevice:
    """One line of ``block info`` (or ``blkid``)."""

    path: str
    uuid: str | None = None
    label: str | None = None
    type: str | None = None
    mount: str | None = None


@dataclass
class SystemFacts:
    """What the first gather script found on the router."""

    release: dict[str, str]
    tools: set[str]
    filesystems: set[str]
    mounts: list[Mount]
    fstab: str | None
    devices: list[BlockDevice]
    usb_storage: bool

    def mount_at(self, target: str) -> Mount | None:
        found = None
        for mount in self.mounts:
            if mount.target == target:
                found = mount
        return found

    def mountpoint_of(self, device: str) -> str | None:
        for mount in self.mounts:
            if mount.source == device and mount.target != f"{WORKDIR}/probe":
                return mount.target
        return None

    @property
    def package_manager(self) -> str | None:
        for tool in ("apk", "opkg"):
            if tool in self.tools:
                return tool
        return None


@dataclass
class DeviceFacts:
    """What the second gather script found on the extroot device."""

    path: str
    exists: bool
    head: bytes = b""
    info: BlockDevice | None = None
    entries: list[str] = field(default_factory=list)
    copy_fstab: str | None = None
    uuid_tags: list[str] = field(default_factory=list)
    probed: bool = False


@dataclass
class Step:
    """One shell command of a plan; ``changes`` is False for mount/unmount helpers."""

    name: str
    command: str
    changes: bool = True


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    fstab_before: str = ""
    fstab_after: str = ""
    uuid: str | None = None
    formatted: bool = False
    copied: bool = False
    active: bool = False
    reboot_pending: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(step.changes for step in self.steps)

    @property
    def commands(self) -> list[str]:
        return [step.command for step in self.steps]


# ---------------------------------------------------------------- gather scripts


def system_gather_script() -> str:
    """Read-only: release, tools, kernel filesystems, mounts, fstab, block devices."""
    tools = " ".join(["opkg", "apk", "uci", "block", "blkid", "tar", *MKFS.values()])
    return "\n".join(
        [
            f"m() {{ printf '\\n%s%s\\n' '{MARK}' \"$1\"; }}",
            "m release; cat /etc/openwrt_release 2>/dev/null",
            f"m tools; for t in {tools}; do command -v $t >/dev/null 2>&1 && echo $t; done",
            "m filesystems; cat /proc/filesystems",
            "m mounts; cat /proc/mounts",
            f"m fstab; [ -f {FSTAB} ] && {{ echo present; cat {FSTAB}; }}",
            "m devices; if command -v block >/dev/null 2>&1; then block info 2>/dev/null;"
            " else blkid 2>/dev/null; fi",
            "m usb; [ -d /sys/module/usb_storage ] && echo loaded",
            "m end; true",
        ]
    )


def device_gather_script(path: str, info: BlockDevice | None, mountpoint: str | None) -> str:
    """Read-only look at the device: first 4 KiB, top-level entries, fstab copy, uuid tags.

    A device that is not mounted is mounted read-only (ext4 without journal replay)
    on a private mount point and unmounted again, so this also runs in check mode.
    """
    dev = shlex.quote(path)
    lines = [
        f"m() {{ printf '\\n%s%s\\n' '{MARK}' \"$1\"; }}",
        f"m exists; [ -b {dev} ] && echo yes",
        f"m head; dd if={dev} bs=4096 count=1 2>/dev/null | od -A n -t x1 -v",
    ]
    fstype = info.type if info else None
    if fstype in LINUX_FILESYSTEMS:
        if mountpoint:
            root = shlex.quote(mountpoint)
            lines.append(f"r={root}")
        else:
            probe = f"{WORKDIR}/probe"
            opts = "ro,noload" if fstype in ("ext3", "ext4") else "ro"
            lines.append(f"r={probe}; mkdir -p $r && mount -t {fstype} -o {opts} {dev} $r || r=")
        lines += [
            'if [ -n "$r" ]; then m probed; echo yes',
            '  m entries; ls -A "$r"',
            "  m copy_fstab; for f in upper/etc/config/fstab etc/config/fstab; do",
            '    [ -f "$r/$f" ] && { echo "$f"; cat "$r/$f"; break; }; done',
            "  m uuid_tags; for f in "
            + " ".join(UUID_TAGS)
            + '; do [ -e "$r/$f" ] && echo $f; done',
        ]
        if not mountpoint:
            lines.append(f"  umount {WORKDIR}/probe; rmdir {WORKDIR}/probe; fi")
        else:
            lines.append("fi")
    lines.append("m end; true")
    return "\n".join(lines)


def lock_command() -> str:
    return (
        f"mkdir {WORKDIR} 2>/dev/null || {{ echo 'another extroot run holds {WORKDIR}' >&2;"
        " exit 75; }"
    )


def cleanup_command() -> str:
    """Undo what a run left behind: our mounts, staging dirs, the lock; always safe."""
    return "\n".join(
        [
            f"for d in {WORKDIR}/device {WORKDIR}/root {WORKDIR}/probe; do",
            '  grep -q " $d " /proc/mounts && umount "$d"',
            "done",
            f"rm -rf {WORKDIR}",
            "true",
        ]
    )


# ---------------------------------------------------------------- parsers


def split_sections(output: str) -> dict[str, str]:
    """Split gather output at the markers; each section's text is exactly what was printed.

    Every marker starts with a newline of its own, so a file without a final newline
    (a hand-written fstab) keeps its exact bytes.
    """
    sections: dict[str, str] = {}
    for chunk in output.split("\n" + MARK)[1:]:
        name, _sep, content = chunk.partition("\n")
        sections[name.strip()] = content
    if "end" not in sections:
        raise ExtrootError("gathering facts on the router stopped early", stdout=output)
    return sections


def parse_release(text: str) -> dict[str, str]:
    release = {}
    for line in text.splitlines():
        if "=" in line:
            key, _sep, value = line.partition("=")
            words = shlex.split(value) if value.strip() else [""]
            release[key.strip()] = words[0] if words else ""
    return release


def _unescape_mount(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def parse_mounts(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            mounts.append(Mount(*(_unescape_mount(p) for p in parts[:3])))
    return mounts


BLOCK_LINE_RE = re.compile(r'([A-Z_]+)="([^"]*)"')


def parse_block_info(text: str) -> list[BlockDevice]:
    """Lines like ``/dev/sda1: UUID="..." LABEL="..." MOUNT="/mnt" TYPE="ext4"``."""
    devices = []
    for line in text.splitlines():
        path, sep, rest = line.partition(":")
        if not sep or not path.startswith("/dev/"):
            continue
        attrs = dict(BLOCK_LINE_RE.findall(rest))
        devices.append(
            BlockDevice(
                path=path.strip(),
                uuid=attrs.get("UUID") or None,
                label=attrs.get("LABEL") or None,
                type=attrs.get("TYPE") or None,
                mount=attrs.get("MOUNT") or None,
            )
        )
    return devices


def parse_system(output: str) -> SystemFacts:
    sec = split_sections(output)
    fstab_text = sec.get("fstab", "")
    fstab = fstab_text.split("\n", 1)[1] if fstab_text.startswith("present\n") else None
    return SystemFacts(
        release=parse_release(sec.get("release", "")),
        tools=set(sec.get("tools", "").split()),
        filesystems={ln.split()[-1] for ln in sec.get("filesystems", "").splitlines() if ln},
        mounts=parse_mounts(sec.get("mounts", "")),
        fstab=fstab,
        devices=parse_block_info(sec.get("devices", "")),
        usb_storage=sec.get("usb", "").strip() == "loaded",
    )


def parse_device(path: str, info: BlockDevice | None, output: str) -> DeviceFacts:
    sec = split_sections(output)
    copy = sec.get("copy_fstab")
    copy_fstab = copy.split("\n", 1)[1] if copy and "\n" in copy else None
    return DeviceFacts(
        path=path,
        exists=sec.get("exists", "").strip() == "yes",
        head=bytes.fromhex("".join(sec.get("head", "").split())),
        info=info,
        entries=sec.get("entries", "").splitlines(),
        copy_fstab=copy_fstab,
        uuid_tags=sec.get("uuid_tags", "").split(),
        probed=sec.get("probed", "").strip() == "yes",
    )


# ---------------------------------------------------------------- decisions


def check_openwrt(facts: SystemFacts) -> None:
    if facts.release.get("DISTRIB_ID") is None:
        raise ExtrootError(
            "the target is not OpenWrt: /etc/openwrt_release is missing or empty;"
            " extroot only exists on OpenWrt"
        )


def find_device(facts: SystemFacts, opts: Options) -> BlockDevice | None:
    """The device named by ``device``, ``uuid`` or ``label`` (None when not found)."""
    for dev in facts.devices:
        if opts.device and dev.path == opts.device:
            return dev
        if not opts.device and opts.uuid and (dev.uuid or "").lower() == opts.uuid.lower():
            return dev
        if not opts.device and not opts.uuid and opts.label and dev.label == opts.label:
            return dev
    if opts.device:
        return BlockDevice(path=opts.device)
    return None


def partition_table(head: bytes) -> str | None:
    """'gpt' or 'dos' when the first sectors carry a partition table signature."""
    if len(head) >= 520 and head[512:520] == b"EFI PART":
        return "gpt"
    if len(head) >= 512 and head[510:512] == b"\x55\xaa":
        return "dos"
    return None


def needs_format(dev: DeviceFacts, opts: Options) -> bool:
    """Decide whether to format; refuse to destroy data unless ``force``."""
    info = dev.info or BlockDevice(dev.path)
    if info.type == opts.fstype and info.label == opts.format_label:
        return False
    holds = None
    if info.type:
        holds = f"a {info.type} filesystem" + (f" labelled '{info.label}'" if info.label else "")
    elif partition_table(dev.head):
        holds = f"a {partition_table(dev.head)} partition table"
    elif dev.head.strip(b"\0"):
        holds = "data of an unknown kind in its first 4 KiB"
    if holds and not opts.force:
        raise ExtrootError(
            f"refusing to format {dev.path}: it holds {holds}. Check that this is the"
            " right device, then set force: true to destroy its contents"
        )
    return True


def missing_packages(
    facts: SystemFacts, opts: Options, will_format: bool, found: bool
) -> list[str]:
    """Packages extroot needs that the router lacks, in install order."""
    wanted = []
    if opts.state == "present" and "block" not in facts.tools:
        wanted.append(PACKAGES["block"])
    if opts.state == "present" and opts.fstype not in facts.filesystems:
        wanted.append(PACKAGES[f"fs:{opts.fstype}"])
    if will_format and MKFS[opts.fstype] not in facts.tools:
        wanted.append(PACKAGES[MKFS[opts.fstype]])
    if not found and not facts.usb_storage:
        wanted.append(PACKAGES["usb"])
    return wanted


def install_command(manager: str, packages: list[str]) -> str:
    names = " ".join(shlex.quote(p) for p in packages)
    if manager == "apk":
        return f"apk update && apk add {names}"
    return f"opkg update && opkg install {names}"


def rootfs_data_device(facts: SystemFacts, device: str) -> str | None:
    """The internal rootfs_data device, to keep reachable at /rwm."""
    for dev in facts.devices:
        if dev.mount in ("/overlay", "/rwm") and dev.path != device:
            return dev.path
    for target in ("/overlay", "/rwm"):
        mount = facts.mount_at(target)
        if mount and mount.source.startswith("/dev/") and mount.source != device:
            return mount.source
    return None


def is_active(facts: SystemFacts, device: str | None, target: str) -> bool:
    """True when the running system already uses ``device`` as its extroot."""
    if not device:
        return False
    mount = facts.mount_at(target)
    if mount is not None and mount.source == device:
        return True
    return any(d.path == device and d.mount == target for d in facts.devices)


# ---------------------------------------------------------------- fstab edits


@dataclass
class FstabEdit:
    """The fstab after the edit, and the same edit as ``uci batch`` lines."""

    before: str
    after: str
    uci_lines: list[str]

    @property
    def changed(self) -> bool:
        return self.before != self.after


def _set(doc: uci.Document, section: uci.Section, option: str, value: str, out: list[str]) -> None:
    if section.set(option, value):
        out.append(f"set fstab.{doc.ref(section)}.{option}={uci.quote(value)}")


def _delete(doc: uci.Document, section: uci.Section, option: str, out: list[str]) -> None:
    if section.delete(option):
        out.append(f"delete fstab.{doc.ref(section)}.{option}")


def _extroot_section(doc: uci.Document, target: str) -> uci.Section | None:
    named = doc.find("extroot")
    if named is not None and named.type == "mount":
        return named
    for section in doc.of_type("mount"):
        if section.get("target") == target:
            return section
    return None


def edit_fstab_present(text: str, target: str, uuid_: str, rwm: str | None) -> FstabEdit:
    """Point an enabled ``mount`` section at the device; disable rivals; add ``rwm``."""
    doc = uci.parse(text)
    out: list[str] = []
    section = _extroot_section(doc, target)
    if section is None:
        section = doc.add("mount", "extroot")
        out.append("set fstab.extroot=mount")
    _set(doc, section, "target", target, out)
    _set(doc, section, "uuid", uuid_, out)
    for stale in ("device", "label"):
        _delete(doc, section, stale, out)
    _set(doc, section, "enabled", "1", out)
    for rival in doc.of_type("mount"):
        if rival is not section and rival.get("target") == target and rival.get("enabled") != "0":
            _set(doc, rival, "enabled", "0", out)
    if rwm is not None:
        _ensure_rwm(doc, rwm, out)
    return FstabEdit(text, uci.render(doc), out)


def _ensure_rwm(doc: uci.Document, device: str, out: list[str]) -> None:
    section = doc.find("rwm")
    if section is None:
        section = next((s for s in doc.of_type("mount") if s.get("target") == "/rwm"), None)
    if section is None:
        section = doc.add("mount", "rwm")
        out.append("set fstab.rwm=mount")
    _set(doc, section, "device", device, out)
    _set(doc, section, "target", "/rwm", out)
    _set(doc, section, "enabled", "1", out)


def edit_fstab_absent(text: str, target: str) -> FstabEdit:
    """Disable every enabled ``mount`` section whose target is the extroot target."""
    doc = uci.parse(text)
    out: list[str] = []
    for section in doc.of_type("mount"):
        if section.get("target") == target and section.get("enabled") != "0":
            _set(doc, section, "enabled", "0", out)
    return FstabEdit(text, uci.render(doc), out)


def fstab_write_command(edit: FstabEdit, use_uci: bool) -> str:
    """Apply the edit: through ``uci batch`` when present, else an atomic rewrite."""
    if use_uci:
        batch = "\n".join([*edit.uci_lines, "commit fstab"])
        return f"uci -q batch <<'LAPIS_UCI_EOF'\n{batch}\nLAPIS_UCI_EOF"
    return write_file_command(FSTAB, edit.after)


def write_file_command(path: str, content: str) -> str:
    """Write ``content`` to a temp file beside ``path`` and rename it over ``path``."""
    directory, _sep, name = path.rpartition("/")
    tmp = shlex.quote(f"{directory}/.{name}.lapis-tmp")
    dest = shlex.quote(path)
    return (
        f"mkdir -p {shlex.quote(directory)} && printf '%s' {shlex.quote(content)} > {tmp}"
        f" && {{ [ ! -e {dest} ] || chmod $(stat -c %a {dest}) {tmp}; }}"
        f" && mv -f {tmp} {dest} || {{ rm -f {tmp}; exit 1; }}"
    )


def copy_file_command(src: str, dest: str) -> str:
    directory = dest.rpartition("/")[0]
    tmp = shlex.quote(f"{dest}.lapis-tmp")
    return (
        f"mkdir -p {shlex.quote(directory)} && cp -p {shlex.quote(src)} {tmp}"
        f" && mv -f {tmp} {shlex.quote(dest)} || {{ rm -f {tmp}; exit 1; }}"
    )


# ---------------------------------------------------------------- device commands


def format_command(device: str, fstype: str, label: str, uuid_: str) -> str:
    dev = shlex.quote(device)
    if fstype == "f2fs":
        return f"mkfs.f2fs -q -f -l {shlex.quote(label)} -U {uuid_} {dev}"
    return f"mkfs.ext4 -q -F -L {shlex.quote(label)} -U {uuid_} {dev}"


PRUNE = rf"\( -path ./lost+found -o -path ./work -o -path ./{STAGING} \) -prune -o"
MANIFEST_FINDS = (
    ("-type d", "stat -c 'd|%n|%f|%u|%g'"),
    ("-type l", "stat -c 'l|%N|%u|%g'"),
    ("-type f", "stat -c 'f|%n|%f|%u|%g|%s|%h|%Y'"),
    ("! -type d ! -type l ! -type f", "stat -c 's|%n|%f|%u|%g|%t,%T'"),
    ("-type f", "md5sum"),
)
MANIFEST_FUNCTION = "\n".join(
    [
        'manifest() { ( cd "$1" && {',
        *(f"  find . -xdev {PRUNE} {test} -exec {cmd} {{}} +" for test, cmd in MANIFEST_FINDS),
        "} ) | sort; }",
    ]
)


def copy_command(source: str, dest: str, workdir: bool = False) -> str:
    """Copy ``source`` onto the device with busybox tar, verify, then move into place.

    The copy goes to a staging directory on the device; it is compared with the
    source (type, mode, owner, size, link count, mtime, link target, device
    numbers, MD5 of every file) and only then moved into place. On any failure the
    staging directory is removed, so a failed run leaves the device as it was.
    """
    src, dst = shlex.quote(source), shlex.quote(dest)
    stage = f"{dst}/{STAGING}"
    return "\n".join(
        [
            MANIFEST_FUNCTION,
            f'fail() {{ rm -rf {stage}; echo "extroot: $1" >&2; exit 1; }}',
            f"rm -rf {stage} && mkdir {stage} || fail 'cannot create the staging directory'",
            f"cd {src} || fail 'cannot enter {source}'",
            "set --",
            'for e in * .[!.]* ..?*; do [ -e "$e" ] || [ -L "$e" ] || continue',
            f'  case "$e" in lost+found|work|{STAGING}) continue;; esac',
            '  set -- "$@" "./$e"; done',
            f'if [ $# -gt 0 ]; then {{ tar -cf - "$@" || echo tar-failed >&2; }} | tar -C {stage}'
            " -xf - || fail 'tar could not copy the data'; fi",
            "# busybox tar does not restore the owner of symlinks: copy it with chown -h",
            "find . -xdev -type l -exec stat -c '%u:%g %n' {} + | while IFS= read -r line; do",
            f'  chown -h "${{line%% *}}" {stage}/"${{line#* }}" || fail "chown ${{line#* }}"; done',
            f"manifest {src} > {WORKDIR}/manifest.source",
            f"manifest {stage} > {WORKDIR}/manifest.copy",
            f"if ! cmp -s {WORKDIR}/manifest.source {WORKDIR}/manifest.copy; then",
            f"  diff {WORKDIR}/manifest.source {WORKDIR}/manifest.copy | head -n 20 >&2",
            "  fail 'the copy differs from the source (lines above)'",
            "fi",
            f"cd {stage} || fail 'staging directory vanished'",
            'for e in * .[!.]* ..?*; do [ -e "$e" ] || [ -L "$e" ] || continue',
            f'  mv "$e" {dst}/ || fail "cannot move $e into place"; done',
            f"cd / && rmdir {stage}" + (f" && mkdir -p {dst}/work" if workdir else "") + " && sync",
        ]
    )


# ---------------------------------------------------------------- planners


@dataclass
class Context:
    """Facts plus the decisions shared by both planners."""

    facts: SystemFacts
    device: DeviceFacts | None
    opts: Options
    use_uci: bool


def _mirror_path(ctx: Context, mountpoint: str, active: bool) -> str | None:
    """Where the second copy of fstab lives: on the device, or in rootfs_data at /rwm."""
    if active:
        return "/rwm/upper/etc/config/fstab" if ctx.facts.mount_at("/rwm") else None
    upper = "/upper" if ctx.opts.target == "/overlay" else ""
    return f"{mountpoint}{upper}/etc/config/fstab"


def _has_copy(entries: list[str], target: str) -> bool:
    return ("upper" in entries) if target == "/overlay" else ("etc" in entries)


def _present_device(ctx: Context) -> DeviceFacts:
    dev = ctx.device
    if dev is None or not dev.exists:
        opts = ctx.opts
        name = opts.device or opts.uuid or opts.label
        raise ExtrootError(
            f"extroot device {name} was not found on the router;"
            " check that the USB stick is plugged in and that kmod-usb-storage is installed"
        )
    return dev


def _filesystem(
    dev: DeviceFacts, opts: Options, existing: str | None, new_uuid: str
) -> tuple[bool, str, str]:
    """Decide the format; return (formatting, uuid, fstype) of the filesystem to use."""
    formatting = needs_format(dev, opts) if opts.format else False
    if formatting and existing:
        raise ExtrootError(
            f"refusing to format {dev.path}: it is mounted at {existing}; unmount it first"
        )
    info = dev.info or BlockDevice(dev.path)
    if formatting:
        return True, new_uuid, opts.fstype
    if info.type not in LINUX_FILESYSTEMS:
        kind = f"a {info.type} filesystem" if info.type else "no filesystem"
        raise ExtrootError(
            f"{dev.path} holds {kind}; extroot needs one of {', '.join(LINUX_FILESYSTEMS)}."
            " Set format: true to create one"
        )
    if not info.uuid:
        raise ExtrootError(f"{dev.path} has no filesystem UUID; reformat it with format: true")
    return False, info.uuid, info.type or opts.fstype


def plan_present(ctx: Context, new_uuid: str) -> Plan:
    """Plan format, copy, configuration and uuid-check reset for ``state: present``."""
    opts, facts, dev = ctx.opts, ctx.facts, _present_device(ctx)
    existing = facts.mountpoint_of(dev.path)
    formatting, fs_uuid, fstype = _filesystem(dev, opts, existing, new_uuid)
    active = is_active(facts, dev.path, opts.target)
    plan = Plan(fstab_before=facts.fstab or "", uuid=fs_uuid, active=active)
    plan.reboot_pending = not active
    mnt = existing or f"{WORKDIR}/device"
    entries = [] if formatting else dev.entries
    if formatting:
        plan.formatted = True
        command = format_command(dev.path, opts.fstype, opts.format_label, fs_uuid)
        plan.steps.append(Step("format", command))

    # The data goes onto the device before any configuration points at it.
    before: list[Step] = []
    if opts.copy_overlay and not active and not _has_copy(entries, opts.target):
        before += _copy_steps(opts.target, mnt)
        plan.copied = True
        entries = [*entries, "upper" if opts.target == "/overlay" else "etc"]

    rwm = None
    if opts.keep_rwm and opts.target == "/overlay":
        rwm = rootfs_data_device(facts, dev.path) or _existing_rwm(facts.fstab)
        if rwm is None:
            plan.warnings.append("keep_rwm: the rootfs_data device was not found; no rwm section")
    edit = edit_fstab_present(facts.fstab or "", opts.target, fs_uuid, rwm)
    plan.fstab_after = edit.after
    fstab = [Step("fstab", fstab_write_command(edit, ctx.use_uci))] if edit.changed else []

    after: list[Step] = []
    mirror = _mirror_path(ctx, mnt, active)
    has_copy = _has_copy(entries, opts.target) or active
    stale = plan.copied or formatting or dev.copy_fstab != edit.after or edit.changed
    if mirror and has_copy and stale:
        after.append(Step("fstab_copy", copy_file_command(FSTAB, mirror)))
    if opts.reset_uuid_check and not formatting and dev.uuid_tags:
        tags = " ".join(shlex.quote(f"{mnt}/{t}") for t in dev.uuid_tags)
        after.append(Step("reset_uuid_check", f"rm -f {tags}"))

    mount, umount = _mount_steps(dev.path, fstype, mnt)
    on_device = bool(before or (after and not active)) and not existing
    plan.steps += [mount, *before] if on_device else before
    plan.steps += fstab + after
    plan.steps += [umount] if on_device else []
    return plan


def _copy_steps(target: str, mnt: str) -> list[Step]:
    if target == "/overlay":
        return [Step("copy", copy_command("/overlay", mnt, workdir=True))]
    source = f"{WORKDIR}/root"
    return [
        Step("bind_root", f"mkdir -p {source} && mount -o bind,ro / {source}", False),
        Step("copy", copy_command(source, mnt)),
        Step("unbind_root", f"umount {source} && rmdir {source}", False),
    ]


def _mount_steps(device: str, fstype: str, mnt: str) -> tuple[Step, Step]:
    """Mounting the device on our private mount point, and unmounting it again."""
    mount = f"mkdir -p {mnt} && mount -t {fstype} {shlex.quote(device)} {mnt}"
    return Step("mount", mount, False), Step(
        "umount", f"sync && umount {mnt} && rmdir {mnt}", False
    )


def _existing_rwm(fstab: str | None) -> str | None:
    if not fstab:
        return None
    try:
        section = uci.parse(fstab).find("rwm")
    except uci.UciError:
        return None
    return section.get("device") if section else None


def _plan_fstab(ctx: Context, plan: Plan, edit: FstabEdit) -> None:
    plan.fstab_after = edit.after
    if edit.changed:
        plan.steps.append(Step("fstab", fstab_write_command(edit, ctx.use_uci)))


def plan_absent(ctx: Context) -> Plan:
    """Disable extroot in fstab (and in the device's copy); the device's data stays."""
    facts, opts, dev = ctx.facts, ctx.opts, ctx.device
    plan = Plan(fstab_before=facts.fstab or "")
    edit = edit_fstab_absent(facts.fstab or "", opts.target)
    _plan_fstab(ctx, plan, edit)
    path = dev.path if dev is not None and dev.exists else None
    active = is_active(facts, path, opts.target)
    plan.active = active
    device_steps: list[Step] = []
    existing = facts.mountpoint_of(path) if path else None
    mnt = existing or f"{WORKDIR}/device"
    if dev is not None and dev.exists and dev.probed:
        mirror = _mirror_path(ctx, mnt, active)
        has_copy = _has_copy(dev.entries, opts.target) or active
        stale = dev.copy_fstab != edit.after or (ctx.use_uci and edit.changed)
        if mirror and has_copy and stale:
            step = Step("fstab_copy", copy_file_command(FSTAB, mirror))
            (device_steps if not active else plan.steps).append(step)
    if device_steps and dev is not None:
        fstype = (dev.info.type if dev.info else None) or opts.fstype
        mount, umount = _mount_steps(dev.path, fstype, mnt)
        plan.steps += [mount, *device_steps, umount] if not existing else device_steps
    plan.reboot_pending = active
    return plan


# ---------------------------------------------------------------- the choke point


@dataclass
class CommandResult:
    rc: int
    stdout: str
    stderr: str


Runner = Callable[[str], CommandResult]


def run_plan(plan: Plan, runner: Runner) -> list[dict[str, Any]]:
    """Run the plan's commands in order; stop at the first failure and raise."""
    done: list[dict[str, Any]] = []
    for step in plan.steps:
        result = runner(step.command)
        done.append({"step": step.name, "rc": result.rc})
        if result.rc != 0:
            lines = result.stderr.strip().splitlines()
            why = f": {lines[-1]}" if lines else ""
            raise ExtrootError(
                f"extroot step '{step.name}' failed on the router (rc={result.rc}){why}",
                rc=result.rc,
                stdout=result.stdout,
                stderr=result.stderr,
                command=step.command,
                steps_done=done,
                changed=any(ran.changes for ran in plan.steps[: len(done) - 1]),
            )
    return done
