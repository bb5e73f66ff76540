# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Typed Dockerfile instructions: each parser node checked and given meaning.

``instruction_from_node(node, filename)`` turns one ``dockerfile_parser.Node`` into
one of the dataclasses below, validating its flags (``--from``, ``--chown``,
``--mount=type=cache,...``, HEALTHCHECK durations, ...) and its arguments. The
values are still unexpanded; ``expand_instruction(instr, expander)`` returns a copy
with the arguments that Docker expands (and only those) passed through
``expander``. Errors are DockerfileError naming the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Union

from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_parser import (
    DockerfileError,
    Heredoc,
    Node,
    parse_heredoc,
)

Expander = Callable[[str], str]

_STAGE_NAME_RE = re.compile(r"^[a-z][a-z0-9\-_.]*$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_MIN_HEALTH_DURATION = 0.001
MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
NETWORK_MODES = ("default", "none", "host")
CACHE_SHARING = ("shared", "private", "locked")


@dataclass(frozen=True)
class Location:
    """Where an instruction is written: file, lines, the text as written, the escape character."""

    filename: str
    start_line: int
    end_line: int
    original: str
    escape: str = "\\"

    def error(self, message: str) -> DockerfileError:
        """A DockerfileError at this instruction's first line."""
        return DockerfileError(message, self.filename, self.start_line)


@dataclass(frozen=True)
class KeyValue:
    """One ``key=value`` of ENV or LABEL (``legacy`` for the ``ENV key value`` form)."""

    key: str
    value: str
    legacy: bool = False


@dataclass(frozen=True)
class Mount:
    """One ``RUN --mount=...``; ``source`` and ``from_`` only for bind/cache/secret."""

    type: str
    target: str
    source: str = ""
    from_: str = ""
    readonly: bool = False
    id: str = ""
    sharing: str = "shared"
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: str = ""
    required: bool = False
    env: str = ""


@dataclass(frozen=True)
class FromInstr:
    loc: Location
    base: str
    stage_name: str = ""
    platform: str = ""


@dataclass(frozen=True)
class RunInstr:
    """``RUN``: ``shell_form`` prepends the SHELL; ``heredocs`` are inline scripts/files."""

    loc: Location
    command: list[str]
    shell_form: bool
    heredocs: list[Heredoc] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    network: str = ""
    security: str = ""


@dataclass(frozen=True)
class CmdInstr:
    loc: Location
    command: list[str]
    shell_form: bool


@dataclass(frozen=True)
class EntrypointInstr:
    loc: Location
    command: list[str]
    shell_form: bool


@dataclass(frozen=True)
class ShellInstr:
    loc: Location
    shell: list[str]


@dataclass(frozen=True)
class EnvInstr:
    loc: Location
    pairs: list[KeyValue]


@dataclass(frozen=True)
class LabelInstr:
    loc: Location
    pairs: list[KeyValue]


@dataclass(frozen=True)
class MaintainerInstr:
    loc: Location
    maintainer: str


@dataclass(frozen=True)
class ExposeInstr:
    loc: Location
    ports: list[str]


@dataclass(frozen=True)
class HeredocSource:
    """A ``COPY <<EOF /dest`` source: inline content written to a file named ``name``."""

    name: str
    content: str
    expand: bool


@dataclass(frozen=True)
class CopyInstr:
    """``COPY`` (``add=False``) or ``ADD`` (``add=True``) with its flags."""

    loc: Location
    sources: list[str]
    dest: str
    add: bool = False
    heredoc_sources: list[HeredocSource] = field(default_factory=list)
    from_: str = ""
    chown: str = ""
    chmod: str = ""
    link: bool = False
    parents: bool = False
    excludes: list[str] = field(default_factory=list)
    checksum: str = ""
    keep_git_dir: bool = False


@dataclass(frozen=True)
class VolumeInstr:
    loc: Location
    paths: list[str]


@dataclass(frozen=True)
class UserInstr:
    loc: Location
    user: str


@dataclass(frozen=True)
class WorkdirInstr:
    loc: Location
    path: str


@dataclass(frozen=True)
class ArgDef:
    """One ``ARG name[=default]``; ``default`` None when no default is written."""

    name: str
    default: str | None = None


@dataclass(frozen=True)
class ArgInstr:
    loc: Location
    args: list[ArgDef]


@dataclass(frozen=True)
class OnbuildInstr:
    """``ONBUILD``: ``trigger`` is the text stored in the image config's OnBuild list."""

    loc: Location
    trigger: str
    instruction: Instruction


@dataclass(frozen=True)
class StopsignalInstr:
    loc: Location
    signal: str


@dataclass(frozen=True)
class HealthcheckInstr:
    """``HEALTHCHECK``: ``test`` is ``["NONE"]``, ``["CMD", ...]`` or ``["CMD-SHELL", s]``.

    Durations are in seconds (None when not given, so the base image's value or
    the runtime default applies).
    """

    loc: Location
    test: list[str]
    interval: float | None = None
    timeout: float | None = None
    start_period: float | None = None
    start_interval: float | None = None
    retries: int | None = None


Instruction = Union[
    FromInstr,
    RunInstr,
    CmdInstr,
    EntrypointInstr,
    ShellInstr,
    EnvInstr,
    LabelInstr,
    MaintainerInstr,
    ExposeInstr,
    CopyInstr,
    VolumeInstr,
    UserInstr,
    WorkdirInstr,
    ArgInstr,
    OnbuildInstr,
    StopsignalInstr,
    HealthcheckInstr,
]


def keyword_of(instr: Instruction) -> str:
    """The instruction keyword in upper case (``COPY``, ``ADD``, ``RUN``, ...)."""
    if isinstance(instr, CopyInstr):
        return "ADD" if instr.add else "COPY"
    return type(instr).__name__[: -len("Instr")].upper()


# --- flags --------------------------------------------------------------------------------


class _Flags:
    """``--name[=value]`` flags of one instruction, checked against what it accepts."""

    def __init__(self, loc: Location, keyword: str, raw: list[str], spec: dict[str, str]) -> None:
        self.values: dict[str, list[str]] = {}
        for text in raw:
            if not text.startswith("--"):
                raise loc.error("bad flag %r for %s; expected --name=value" % (text, keyword))
            name, has_value, value = text[2:].partition("=")
            kind = spec.get(name)
            if kind is None:
                known = ", ".join("--" + key for key in sorted(spec)) or "no flags"
                raise loc.error("unknown flag --%s for %s; expected %s" % (name, keyword, known))
            if kind != "bool" and not has_value:
                raise loc.error("missing a value on flag --%s; expected --%s=..." % (name, name))
            if kind == "bool" and has_value and value.lower() not in ("true", "false"):
                raise loc.error("expecting a boolean value for flag --%s, not %r" % (name, value))
            if kind != "list" and name in self.values:
                raise loc.error("duplicate flag specified: --%s" % name)
            self.values.setdefault(name, []).append(value if has_value else "true")

    def string(self, name: str) -> str:
        values = self.values.get(name)
        return values[-1] if values else ""

    def boolean(self, name: str) -> bool:
        return self.string(name).lower() == "true"

    def many(self, name: str) -> list[str]:
        return list(self.values.get(name, []))


_FLAG_SPECS: dict[str, dict[str, str]] = {
    "from": {"platform": "string"},
    "run": {"mount": "list", "network": "string", "security": "string"},
    "copy": {
        "from": "string",
        "chown": "string",
        "chmod": "string",
        "link": "bool",
        "parents": "bool",
        "exclude": "list",
    },
    "add": {
        "chown": "string",
        "chmod": "string",
        "link": "bool",
        "exclude": "list",
        "checksum": "string",
        "keep-git-dir": "bool",
    },
    "healthcheck": {
        "interval": "string",
        "timeout": "string",
        "start-period": "string",
        "start-interval": "string",
        "retries": "string",
    },
}


# --- node to instruction ------------------------------------------------------------------


def instruction_from_node(
    node: Node, filename: str = "Dockerfile", escape: str = "\\"
) -> Instruction:
    """The typed instruction of one parser node; raises DockerfileError naming its line.

    ``escape`` is the file's escape character (``# escape=``), used when the
    instruction's words are expanded later.
    """
    loc = Location(filename, node.start_line, node.end_line, node.original, escape)
    name = node.instruction
    builder = _BUILDERS.get(name)
    if builder is None:
        raise loc.error(
            "unknown instruction %s; expected one of %s"
            % (node.keyword.upper(), ", ".join(sorted(k.upper() for k in _BUILDERS)))
        )
    flags = _Flags(loc, name.upper(), node.flags, _FLAG_SPECS.get(name, {}))
    return builder(node, loc, flags)


def _need_args(node: Node, loc: Location, count: int = 1) -> None:
    if len(node.args) < count:
        noun = "argument" if count == 1 else "arguments"
        raise loc.error(
            "%s requires at least %d %s" % (node.keyword.upper(), count, noun)
            + "; expected e.g. %s" % _EXAMPLES.get(node.instruction, node.keyword.upper() + " ...")
        )


_EXAMPLES = {
    "from": "FROM alpine:3.20 AS build",
    "run": "RUN make install",
    "cmd": 'CMD ["app", "--serve"]',
    "entrypoint": 'ENTRYPOINT ["app"]',
    "shell": 'SHELL ["/bin/bash", "-c"]',
    "env": "ENV KEY=value",
    "label": "LABEL key=value",
    "maintainer": "MAINTAINER name <mail@example.com>",
    "expose": "EXPOSE 80/tcp",
    "copy": "COPY src/ /app/",
    "add": "ADD archive.tar.gz /opt/",
    "volume": "VOLUME /data",
    "user": "USER app:app",
    "workdir": "WORKDIR /app",
    "arg": "ARG VERSION=1.0",
    "onbuild": "ONBUILD RUN make",
    "stopsignal": "STOPSIGNAL SIGTERM",
    "healthcheck": "HEALTHCHECK CMD curl -f http://localhost/",
}


def _from(node: Node, loc: Location, flags: _Flags) -> Instruction:
    args = node.args
    if len(args) not in (1, 3) or (len(args) == 3 and args[1].lower() != "as"):
        raise loc.error(
            "FROM requires either one or three arguments; expected FROM image [AS name]"
        )
    stage = ""
    if len(args) == 3:
        stage = args[2].lower()
        if not _STAGE_NAME_RE.match(stage):
            raise loc.error(
                "invalid name for build stage %r; expected a letter followed by letters, digits, "
                "'-', '_' or '.'" % args[2]
            )
    return FromInstr(loc, args[0], stage, flags.string("platform"))


def _command(node: Node) -> tuple[list[str], bool]:
    if node.json_form:
        return list(node.args), False
    return ([" ".join(node.args)] if node.args else []), True


def _run(node: Node, loc: Location, flags: _Flags) -> Instruction:
    _need_args(node, loc)
    command, shell_form = _command(node)
    mounts = [parse_mount(text, loc) for text in flags.many("mount")]
    network = flags.string("network")
    if network and network not in NETWORK_MODES:
        raise loc.error(
            "unsupported network mode %r; expected one of %s" % (network, ", ".join(NETWORK_MODES))
        )
    security = flags.string("security")
    if security and security not in ("sandbox", "insecure"):
        raise loc.error("unsupported security mode %r; expected sandbox or insecure" % security)
    return RunInstr(loc, command, shell_form, list(node.heredocs), mounts, network, security)


def _cmd(node: Node, loc: Location, flags: _Flags) -> Instruction:
    command, shell_form = _command(node)
    return CmdInstr(loc, command, shell_form)


def _entrypoint(node: Node, loc: Location, flags: _Flags) -> Instruction:
    command, shell_form = _command(node)
    return EntrypointInstr(loc, command, shell_form)


def _shell(node: Node, loc: Location, flags: _Flags) -> Instruction:
    if not node.json_form:
        raise loc.error('SHELL requires the arguments as a JSON array; expected SHELL ["sh", "-c"]')
    _need_args(node, loc)
    return ShellInstr(loc, list(node.args))


def _pairs(node: Node, loc: Location) -> list[KeyValue]:
    _need_args(node, loc)
    pairs = []
    for i in range(0, len(node.args) - 2, 3):
        key, value, sep = node.args[i : i + 3]
        if not key:
            raise loc.error("%s names can not be blank" % node.keyword.upper())
        pairs.append(KeyValue(key, value, sep == ""))
    return pairs


def _env(node: Node, loc: Location, flags: _Flags) -> Instruction:
    return EnvInstr(loc, _pairs(node, loc))


def _label(node: Node, loc: Location, flags: _Flags) -> Instruction:
    return LabelInstr(loc, _pairs(node, loc))


def _maintainer(node: Node, loc: Location, flags: _Flags) -> Instruction:
    _need_args(node, loc)
    return MaintainerInstr(loc, node.args[0])


def _expose(node: Node, loc: Location, flags: _Flags) -> Instruction:
    _need_args(node, loc)
    return ExposeInstr(loc, list(node.args))


def _copy_or_add(node: Node, loc: Location, flags: _Flags) -> Instruction:
    add = node.instruction == "add"
    _need_args(node, loc, 2)
    dest = node.args[-1]
    if parse_heredoc(dest) is not None:
        raise loc.error(
            "%s cannot accept a heredoc as a destination; expected a path" % node.keyword.upper()
        )
    bodies = {doc.name: doc for doc in node.heredocs}
    sources: list[str] = []
    inline: list[HeredocSource] = []
    for src in node.args[:-1]:
        doc = parse_heredoc(src) if not node.json_form else None
        if doc is None:
            sources.append(src)
            continue
        body = bodies.get(doc.name, doc)
        inline.append(HeredocSource(doc.name, body.body(), body.expand))
    return CopyInstr(
        loc,
        sources,
        dest,
        add=add,
        heredoc_sources=inline,
        from_=flags.string("from"),
        chown=flags.string("chown"),
        chmod=flags.string("chmod"),
        link=flags.boolean("link"),
        parents=flags.boolean("parents"),
        excludes=flags.many("exclude"),
        checksum=flags.string("checksum"),
        keep_git_dir=flags.boolean("keep-git-dir"),
    )


def _volume(node: Node, loc: Location, flags: _Flags) -> Instruction:
    _need_args(node, loc)
    for path in node.args:
        if not path.strip():
            raise loc.error("VOLUME specified can not be an empty string; expected a path")
    return VolumeInstr(loc, list(node.args))


def _user(node: Node, loc: Location, flags: _Flags) -> Instruction:
    _need_args(node, loc)
    return UserInstr(loc, node.args[0])


def _workdir(node: Node, loc: Location, flags: _Flags) -> Instruction:
    _need_args(node, loc)
    return WorkdirInstr(loc, node.args[0])


def _arg(node: Node, loc: Location, flags: _Flags) -> Instruction:
    _need_args(node, loc)
    defs = []
    for word in node.args:
        name, has_default, default = word.partition("=")
        if not name:
            raise loc.error("ARG names can not be blank; expected ARG name[=default]")
        defs.append(ArgDef(name, default if has_default else None))
    return ArgInstr(loc, defs)


def _onbuild(node: Node, loc: Location, flags: _Flags) -> Instruction:
    child = node.child
    if child is None:
        raise loc.error("ONBUILD requires at least one argument; expected e.g. ONBUILD RUN make")
    keyword = child.instruction
    if keyword == "onbuild":
        raise loc.error("chaining ONBUILD via ONBUILD ONBUILD isn't allowed")
    if keyword in ("from", "maintainer"):
        raise loc.error("%s isn't allowed as an ONBUILD trigger" % keyword.upper())
    child.start_line, child.end_line = node.start_line, node.end_line
    child.heredocs = list(node.heredocs)
    inner = instruction_from_node(child, loc.filename, loc.escape)
    trigger = re.sub(r"(?i)^\s*ONBUILD\s*", "", node.original)
    for doc in node.heredocs:
        trigger += "\n" + doc.content + doc.name
    return OnbuildInstr(loc, trigger, inner)


def _stopsignal(node: Node, loc: Location, flags: _Flags) -> Instruction:
    _need_args(node, loc)
    return StopsignalInstr(loc, node.args[0])


def _healthcheck(node: Node, loc: Location, flags: _Flags) -> Instruction:
    _need_args(node, loc)
    kind = node.args[0].upper()
    if kind == "NONE":
        if len(node.args) > 1 or node.flags:
            raise loc.error("HEALTHCHECK NONE takes no arguments and no flags")
        return HealthcheckInstr(loc, ["NONE"])
    if kind != "CMD":
        raise loc.error("unknown type %r in HEALTHCHECK; expected CMD or NONE" % node.args[0])
    if len(node.args) < 2:
        raise loc.error("missing command after HEALTHCHECK CMD; expected HEALTHCHECK CMD cmd ...")
    test = ["CMD", *node.args[1:]] if node.json_form else ["CMD-SHELL", node.args[1]]
    retries = None
    if flags.string("retries"):
        try:
            retries = int(flags.string("retries"))
        except ValueError:
            raise loc.error(
                "--retries must be an integer, not %r" % flags.string("retries")
            ) from None
        if retries < 0:
            raise loc.error("--retries cannot be negative (%d)" % retries)
    return HealthcheckInstr(
        loc,
        test,
        interval=_health_duration(flags, "interval", loc),
        timeout=_health_duration(flags, "timeout", loc),
        start_period=_health_duration(flags, "start-period", loc),
        start_interval=_health_duration(flags, "start-interval", loc),
        retries=retries,
    )


def _health_duration(flags: _Flags, name: str, loc: Location) -> float | None:
    text = flags.string(name)
    if not text:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise loc.error("--%s: %s" % (name, exc)) from None
    if seconds != 0 and seconds < _MIN_HEALTH_DURATION:
        raise loc.error("--%s %r cannot be less than 1ms" % (name, text))
    return seconds


def parse_duration(text: str) -> float:
    """A Go duration (``30s``, ``1m30s``, ``1.5h``, ``0``) in seconds."""
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_RE.match(text, pos)
        if not match:
            raise ValueError("invalid duration %r; expected e.g. 30s, 1m30s or 500ms" % text)
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text:
        raise ValueError("empty duration; expected e.g. 30s")
    return total


def parse_mount(text: str, loc: Location) -> Mount:
    """One ``--mount`` value (CSV ``key=value`` list) as a Mount; defaults per type."""
    fields: dict[str, str] = {}
    flags: set[str] = set()
    for part in _csv_fields(text):
        key, has_value, value = part.partition("=")
        key = key.strip().lower()
        if not has_value:
            flags.add(key)
            continue
        fields[key] = value
    kind = fields.pop("type", "bind").lower()
    if kind not in MOUNT_TYPES:
        raise loc.error(
            "unsupported mount type %r; expected one of %s" % (kind, ", ".join(MOUNT_TYPES))
        )
    return _mount_from_fields(kind, fields, flags, loc, text)


def _csv_fields(text: str) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    quote = False
    for ch in text:
        if ch == '"':
            quote = not quote
        elif ch == "," and not quote:
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
    out.append("".join(current))
    return [part for part in out if part.strip()]


_MOUNT_ALIASES = {"dst": "target", "destination": "target", "src": "source", "ro": "readonly"}
_MOUNT_KEYS = frozenset(
    {"target", "source", "from", "readonly", "rw", "readwrite", "id", "sharing", "mode", "uid"}
    | {"gid", "size", "required", "env", "tmpfs-size"}
)


def _mount_from_fields(
    kind: str, fields: dict[str, str], flags: set[str], loc: Location, text: str
) -> Mount:
    opts: dict[str, str] = {}
    for key, value in fields.items():
        opts[_MOUNT_ALIASES.get(key, key)] = value
    for key in flags:
        opts[_MOUNT_ALIASES.get(key, key)] = "true"
    unknown = sorted(set(opts) - _MOUNT_KEYS)
    if unknown:
        raise loc.error("unexpected key %r in --mount=%s" % (unknown[0], text))
    readonly = kind == "bind"
    if "readonly" in opts:
        readonly = _bool_opt(opts["readonly"], "readonly", loc)
    for key in ("rw", "readwrite"):
        if key in opts:
            readonly = not _bool_opt(opts[key], key, loc)
    target = opts.get("target", "")
    if not target and kind not in ("secret", "ssh"):
        raise loc.error("--mount=%s: a target is required; expected target=/path" % text)
    sharing = opts.get("sharing", "shared").lower()
    if sharing not in CACHE_SHARING:
        raise loc.error(
            "unsupported sharing value %r; expected shared, private or locked" % sharing
        )
    return Mount(
        type=kind,
        target=target,
        source=opts.get("source", ""),
        from_=opts.get("from", ""),
        readonly=readonly,
        id=opts.get("id", ""),
        sharing=sharing,
        mode=_int_opt(opts, "mode", 8, loc),
        uid=_int_opt(opts, "uid", 10, loc),
        gid=_int_opt(opts, "gid", 10, loc),
        size=opts.get("size", opts.get("tmpfs-size", "")),
        required=_bool_opt(opts.get("required", "false"), "required", loc),
        env=opts.get("env", ""),
    )


def _bool_opt(value: str, key: str, loc: Location) -> bool:
    if value.lower() in ("true", "1", ""):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise loc.error("invalid value %r for mount option %s; expected true or false" % (value, key))


def _int_opt(opts: dict[str, str], key: str, base: int, loc: Location) -> int | None:
    if key not in opts:
        return None
    try:
        return int(opts[key], base)
    except ValueError:
        raise loc.error("invalid value %r for mount option %s" % (opts[key], key)) from None


_BUILDERS: dict[str, Callable[[Node, Location, _Flags], Instruction]] = {
    "from": _from,
    "run": _run,
    "cmd": _cmd,
    "entrypoint": _entrypoint,
    "shell": _shell,
    "env": _env,
    "label": _label,
    "maintainer": _maintainer,
    "expose": _expose,
    "copy": _copy_or_add,
    "add": _copy_or_add,
    "volume": _volume,
    "user": _user,
    "workdir": _workdir,
    "arg": _arg,
    "onbuild": _onbuild,
    "stopsignal": _stopsignal,
    "healthcheck": _healthcheck,
}


# --- expansion ----------------------------------------------------------------------------


def expand_instruction(instr: Instruction, ex: Expander) -> Instruction:
    """A copy with the arguments Docker expands passed through ``ex`` (others untouched).

    Expanded: ENV and LABEL keys and values, ARG names and defaults, COPY/ADD
    sources, destination, ``--chown``, ``--chmod``, ``--checksum``, ``--exclude``
    and ``--from``, EXPOSE ports, VOLUME paths, USER, WORKDIR, STOPSIGNAL, and the
    fields of ``RUN --mount``. Not expanded: RUN, CMD, ENTRYPOINT, SHELL,
    HEALTHCHECK (the container's shell does it), MAINTAINER and ONBUILD. FROM is
    expanded by the planner with the global build args only.
    """
    expand = _EXPANDERS.get(type(instr))
    return instr if expand is None else expand(instr, ex)


def _expand_pairs(instr: Instruction, ex: Expander) -> Instruction:
    if not isinstance(instr, (EnvInstr, LabelInstr)):
        return instr
    return replace(instr, pairs=[KeyValue(ex(p.key), ex(p.value), p.legacy) for p in instr.pairs])


def _expand_arg(instr: Instruction, ex: Expander) -> Instruction:
    if not isinstance(instr, ArgInstr):
        return instr
    defs = [ArgDef(ex(d.name), None if d.default is None else ex(d.default)) for d in instr.args]
    return replace(instr, args=defs)


def _expand_simple(instr: Instruction, ex: Expander) -> Instruction:
    if isinstance(instr, ExposeInstr):
        return replace(instr, ports=[ex(port) for port in instr.ports])
    if isinstance(instr, VolumeInstr):
        return replace(instr, paths=[ex(path) for path in instr.paths])
    if isinstance(instr, UserInstr):
        return replace(instr, user=ex(instr.user))
    if isinstance(instr, WorkdirInstr):
        return replace(instr, path=ex(instr.path))
    if isinstance(instr, StopsignalInstr):
        return replace(instr, signal=ex(instr.signal))
    return instr


def _expand_run(instr: Instruction, ex: Expander) -> Instruction:
    if not isinstance(instr, RunInstr) or not instr.mounts:
        return instr
    return replace(instr, mounts=[_expand_mount(m, ex) for m in instr.mounts])


def _expand_copy(instr: Instruction, ex: Expander) -> Instruction:
    if not isinstance(instr, CopyInstr):
        return instr
    return replace(
        instr,
        sources=[ex(src) for src in instr.sources],
        dest=ex(instr.dest),
        from_=ex(instr.from_),
        chown=ex(instr.chown),
        chmod=ex(instr.chmod),
        checksum=ex(instr.checksum),
        excludes=[ex(pattern) for pattern in instr.excludes],
    )


def _expand_mount(mount: Mount, ex: Expander) -> Mount:
    return replace(
        mount,
        target=ex(mount.target),
        source=ex(mount.source),
        from_=ex(mount.from_),
        id=ex(mount.id),
        env=ex(mount.env),
    )


_EXPANDERS: dict[type, Callable[[Instruction, Expander], Instruction]] = {
    EnvInstr: _expand_pairs,
    LabelInstr: _expand_pairs,
    ArgInstr: _expand_arg,
    CopyInstr: _expand_copy,
    ExposeInstr: _expand_simple,
    VolumeInstr: _expand_simple,
    UserInstr: _expand_simple,
    WorkdirInstr: _expand_simple,
    StopsignalInstr: _expand_simple,
    RunInstr: _expand_run,
}


def stage_name_valid(name: str) -> bool:
    """Whether ``name`` is a valid ``FROM ... AS name`` (already lower-cased)."""
    return bool(_STAGE_NAME_RE.match(name))
