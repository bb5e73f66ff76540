# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Dockerfile build plan: stages, build args, expansion and the image config per step.

``plan_build(text, ...)`` parses a Dockerfile, splits it into the global ``ARG``
block and its stages, resolves build args (user values, defaults, the predefined
proxy and platform args), expands every instruction's arguments with the
environment it sees, follows ``FROM <stage>``, ``COPY --from`` and ``RUN
--mount=from=`` to the stages the ``target`` needs, applies ONBUILD triggers of
base images, and simulates the image config (ENV, WORKDIR, USER, SHELL,
ENTRYPOINT/CMD, ...) after every step. The result is a ``BuildPlan`` that an
executor walks: ``RUN`` steps carry their argv, env, user and workdir; ``COPY``
and ``ADD`` steps their expanded sources and absolute destination; config-only
steps the image config after them. Nothing touches the disk here.

``step_cache_key`` makes the cache key of a step from its parent chain, the
instruction after substitution, the build args it uses and the content digest
of its sources (see ``dockerfile_context``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform as host_platform
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace

from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_instructions import (
    ArgDef,
    ArgInstr,
    CmdInstr,
    CopyInstr,
    EntrypointInstr,
    EnvInstr,
    ExposeInstr,
    FromInstr,
    HealthcheckInstr,
    Instruction,
    LabelInstr,
    Location,
    MaintainerInstr,
    OnbuildInstr,
    RunInstr,
    ShellInstr,
    StopsignalInstr,
    UserInstr,
    VolumeInstr,
    WorkdirInstr,
    expand_instruction,
    instruction_from_node,
    keyword_of,
)
from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_parser import (
    DockerfileError,
    parse_dockerfile,
    parse_heredoc,
)
from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_shell import (
    ExpansionError,
    ShellLex,
)

PROXY_ARGS = (
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
)
PLATFORM_ARGS = (
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
)
DEFAULT_SHELL = ("/bin/sh", "-c")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PORT_RE = re.compile(r"^(\d+)(?:-(\d+))?(?:/([A-Za-z]+))?$")
_REMOTE_RE = re.compile(r"^(?:https?://|git://|git@[^:]+:|ssh://|github\.com/)", re.IGNORECASE)
_CHECKSUM_RE = re.compile(r"^(?:sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})$")
_CHMOD_RE = re.compile(r"^(?:[0-7]{3,4}|[ugoa]*[-+=][rwxXst]*(?:,[ugoa]*[-+=][rwxXst]*)*)$")
_SIGNAL_RE = re.compile(r"^(?:\d+|(?:SIG)?[A-Z][A-Z0-9]*(?:[+-]\d+)?)$", re.IGNORECASE)
_MACHINES = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "arm64": ("arm64", ""),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i686": ("386", ""),
    "i386": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
    "mips": ("mips", ""),
    "mipsel": ("mipsle", ""),
}


# --- platform and image config ------------------------------------------------------------


@dataclass(frozen=True)
class Platform:
    """An OCI platform: ``linux/amd64``, ``linux/arm/v7``."""

    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    def __str__(self) -> str:
        text = "%s/%s" % (self.os, self.architecture)
        return text + "/" + self.variant if self.variant else text

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]`` (or just ``arch``, taken as Linux)."""
        parts = text.strip().lower().split("/")
        if len(parts) == 1 and parts[0]:
            return cls("linux", parts[0])
        if len(parts) in (2, 3) and all(parts):
            return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")
        raise ValueError("invalid platform %r; expected os/arch[/variant], e.g. linux/amd64" % text)

    @classmethod
    def host(cls) -> Platform:
        """The platform of the machine this runs on."""
        arch, variant = _MACHINES.get(host_platform.machine().lower(), ("amd64", ""))
        return cls("linux", arch, variant)

    def args(self, prefix: str) -> dict[str, str]:
        """The ``<prefix>PLATFORM/OS/ARCH/VARIANT`` build args for this platform."""
        return {
            prefix + "PLATFORM": str(self),
            prefix + "OS": self.os,
            prefix + "ARCH": self.architecture,
            prefix + "VARIANT": self.variant,
        }


@dataclass
class ImageConfig:
    """The runtime part of an image config (the OCI ``config`` object, Docker extras)."""

    env: list[str] = field(default_factory=list)
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    working_dir: str = ""
    user: str = ""
    exposed_ports: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)
    stop_signal: str = ""
    healthcheck: dict[str, object] | None = None
    shell: list[str] | None = None
    onbuild: list[str] = field(default_factory=list)
    author: str = ""

    def env_map(self) -> dict[str, str]:
        """``Env`` as a dict (later entries win)."""
        out: dict[str, str] = {}
        for item in self.env:
            key, _sep, value = item.partition("=")
            out[key] = value
        return out

    def set_env(self, key: str, value: str) -> None:
        """Set or replace one ``Env`` entry, keeping the order of the others."""
        entry = "%s=%s" % (key, value)
        for i, item in enumerate(self.env):
            if item.partition("=")[0] == key:
                self.env[i] = entry
                return
        self.env.append(entry)

    def to_oci(self) -> dict[str, object]:
        """The OCI/Docker ``config`` object (only set fields)."""
        out: dict[str, object] = {}
        simple: list[tuple[str, object]] = [
            ("User", self.user),
            ("Env", list(self.env)),
            ("Entrypoint", self.entrypoint),
            ("Cmd", self.cmd),
            ("WorkingDir", self.working_dir),
            ("Labels", dict(self.labels)),
            ("StopSignal", self.stop_signal),
            ("Healthcheck", self.healthcheck),
            ("Shell", self.shell),
            ("OnBuild", list(self.onbuild)),
        ]
        for key, value in simple:
            if value:
                out[key] = value
        if self.cmd == [] and self.entrypoint is None:
            out["Cmd"] = []
        if self.exposed_ports:
            out["ExposedPorts"] = {port: {} for port in sorted(self.exposed_ports)}
        if self.volumes:
            out["Volumes"] = {path: {} for path in sorted(self.volumes)}
        return out

    @classmethod
    def from_oci(cls, config: Mapping[str, object]) -> ImageConfig:
        """Read an OCI/Docker ``config`` object (unknown keys ignored)."""

        def strings(key: str) -> list[str] | None:
            value = config.get(key)
            return [str(v) for v in value] if isinstance(value, list) else None

        def keys(key: str) -> list[str]:
            value = config.get(key)
            return sorted(str(k) for k in value) if isinstance(value, dict) else []

        labels = config.get("Labels")
        health = config.get("Healthcheck")
        return cls(
            env=strings("Env") or [],
            cmd=strings("Cmd"),
            entrypoint=strings("Entrypoint"),
            working_dir=str(config.get("WorkingDir") or ""),
            user=str(config.get("User") or ""),
            exposed_ports=keys("ExposedPorts"),
            labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
            volumes=keys("Volumes"),
            stop_signal=str(config.get("StopSignal") or ""),
            healthcheck=dict(health) if isinstance(health, dict) else None,
            shell=strings("Shell"),
            onbuild=strings("OnBuild") or [],
        )


BaseResolver = Callable[[str, Platform], ImageConfig]


def _no_base(ref: str, platform: Platform) -> ImageConfig:
    return ImageConfig()


# --- plan data ----------------------------------------------------------------------------


@dataclass
class PlanStep:
    """One instruction of a stage after substitution, with what an executor needs.

    ``kind`` is ``run``, ``copy``, ``add`` (each makes a layer) or ``config``
    (an empty-layer history entry). ``created_by`` is the history text;
    ``identity`` is the canonical description hashed into the cache key.
    """

    stage: int
    index: int
    kind: str
    instruction: Instruction
    created_by: str
    identity: dict[str, object]
    config: ImageConfig
    cache_args: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    proxy_env: list[str] = field(default_factory=list)
    remote_sources: list[str] = field(default_factory=list)
    inline_files: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = ""
    dest: str = ""
    source_stage: int | None = None
    source_image: str = ""
    mount_stages: list[int] = field(default_factory=list)
    mount_images: list[str] = field(default_factory=list)
    onbuild: bool = False

    @property
    def empty_layer(self) -> bool:
        """Config-only steps make no layer."""
        return self.kind == "config"


@dataclass
class PlanStage:
    """One ``FROM`` block: its base (image or earlier stage), steps and final config."""

    index: int
    name: str
    base: str
    base_stage: int | None
    platform: Platform
    loc: Location
    steps: list[PlanStep] = field(default_factory=list)
    config: ImageConfig = field(default_factory=ImageConfig)
    deps: list[int] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    @property
    def is_scratch(self) -> bool:
        """``FROM scratch``: no base layers."""
        return self.base_stage is None and self.base.lower() == "scratch"


@dataclass
class BuildPlan:
    """Everything to build ``target``: the needed stages, in order, and the args used."""

    filename: str
    directives: dict[str, str]
    stages: list[PlanStage]
    target: int
    needed: list[int]
    global_args: dict[str, str]
    unused_build_args: list[str]
    warnings: list[str]

    @property
    def target_stage(self) -> PlanStage:
        """The stage whose result is the built image."""
        return self.stages[self.target]

    def base_images(self) -> list[str]:
        """External images the needed stages use (FROM, COPY --from, --mount from=)."""
        out: list[str] = []
        for index in self.needed:
            stage = self.stages[index]
            for ref in (
                [] if stage.base_stage is not None or stage.is_scratch else [stage.base]
            ) + (stage.images):
                if ref not in out:
                    out.append(ref)
        return out


# --- parsing into stages ------------------------------------------------------------------


@dataclass
class _RawStage:
    instr: FromInstr
    body: list[Instruction]


def load_instructions(
    text: str, filename: str = "Dockerfile"
) -> tuple[dict[str, str], list[Instruction]]:
    """Parse text to typed instructions; returns the parser directives too."""
    result = parse_dockerfile(text, filename)
    escape = result.escape
    return result.directives, [
        instruction_from_node(node, filename, escape) for node in result.nodes
    ]


def split_stages(instrs: list[Instruction]) -> tuple[list[ArgInstr], list[_RawStage]]:
    """The global ARGs before the first FROM, and the stages."""
    meta: list[ArgInstr] = []
    stages: list[_RawStage] = []
    for instr in instrs:
        if isinstance(instr, FromInstr):
            stages.append(_RawStage(instr, []))
        elif stages:
            stages[-1].body.append(instr)
        elif isinstance(instr, ArgInstr):
            meta.append(instr)
        else:
            raise instr.loc.error(
                "%s before the first FROM; expected FROM first (only ARG may come before it)"
                % keyword_of(instr)
            )
    if not stages:
        loc = meta[-1].loc if meta else Location("Dockerfile", 1, 1, "")
        raise loc.error("no FROM instruction; expected at least one build stage")
    names: dict[str, int] = {}
    for stage in stages:
        name = stage.instr.stage_name
        if name and name in names:
            raise stage.instr.loc.error(
                "duplicate stage name %r (first used at line %d); expected unique names"
                % (name, names[name])
            )
        if name:
            names[name] = stage.instr.loc.start_line
    return meta, stages


# --- build args -------------------------------------------------------------------------


class _Args:
    """Build args given by the user, and which of them the Dockerfile consumed."""

    def __init__(self, given: Mapping[str, str]) -> None:
        self.given = dict(given)
        self.used: set[str] = set()

    def lookup(self, name: str) -> str | None:
        if name in self.given:
            self.used.add(name)
            return self.given[name]
        return None

    def unused(self) -> list[str]:
        return sorted(k for k in self.given if k not in self.used and k not in PROXY_ARGS)

    def proxies(self) -> dict[str, str]:
        return {k: v for k, v in self.given.items() if k in PROXY_ARGS}


def _expander(
    env: Mapping[str, str], loc: Location, used: set[str] | None = None, raw: bool = False
) -> Callable[[str], str]:
    # ``raw`` is for heredoc bodies: quotes there belong to the file, only ``$`` and
    # the escape character are processed.
    lex = ShellLex("\\" if raw else loc.escape, skip_quotes=raw)

    def expand(word: str) -> str:
        try:
            result = lex.process(word, env)
        except ExpansionError as exc:
            raise loc.error(str(exc)) from None
        if used is not None:
            used.update(result.matched)
        return result.value

    return expand


def resolve_global_args(
    meta: list[ArgInstr], args: _Args, auto: Mapping[str, str]
) -> dict[str, str]:
    """Values of the ARGs before the first FROM (plus the automatic platform args)."""
    env: dict[str, str] = dict(auto)
    for instr in meta:
        for definition in instr.args:
            # One ARG line is read left to right: ``ARG A=1 B=$A`` gives B the new A.
            value = args.lookup(definition.name)
            if value is None and definition.default is not None:
                value = _expander(env, instr.loc)(definition.default)
            if value is not None:
                env[definition.name] = value
            elif definition.name in env and definition.name not in auto:
                del env[definition.name]
    return env


# --- stage simulation ---------------------------------------------------------------------


@dataclass
class _StageState:
    config: ImageConfig
    args: dict[str, str | None] = field(default_factory=dict)
    cmd_set: bool = False

    def env(self) -> dict[str, str]:
        out = {k: v for k, v in self.args.items() if v is not None}
        out.update(self.config.env_map())
        return out

    def arg_values(self) -> dict[str, str]:
        env_keys = self.config.env_map()
        return {k: v for k, v in self.args.items() if v is not None and k not in env_keys}


class _Planner:
    def __init__(
        self,
        raw: list[_RawStage],
        *,
        global_args: dict[str, str],
        args: _Args,
        target_platform: Platform,
        build_platform: Platform,
        resolve_base: BaseResolver,
    ) -> None:
        self.raw = raw
        self.global_args = global_args
        self.args = args
        self.target_platform = target_platform
        self.build_platform = build_platform
        self.resolve_base = resolve_base
        self.stages: list[PlanStage] = []
        self.warnings: list[str] = []

    def stage_index(self, name: str, loc: Location, current: int, what: str) -> int | None:
        lowered = name.lower()
        if lowered.isdigit():
            index = int(lowered)
            if index >= current:
                raise loc.error(
                    "%s=%s refers to stage %d, which is not defined before this one; expected an "
                    "earlier stage's index or name" % (what, name, index)
                )
            return index
        for stage in self.raw[:current]:
            if stage.instr.stage_name == lowered:
                return self.raw.index(stage)
        for later in self.raw[current:]:
            if later.instr.stage_name == lowered:
                raise loc.error(
                    "%s %s refers to stage %r defined later (line %d); a stage can only use "
                    "stages defined before it" % (what, name, lowered, later.instr.loc.start_line)
                )
        return None

    def run(self) -> list[PlanStage]:
        for index, raw in enumerate(self.raw):
            self.stages.append(self.plan_stage(index, raw))
        return self.stages

    def plan_stage(self, index: int, raw: _RawStage) -> PlanStage:
        loc = raw.instr.loc
        expand = _expander(self.global_args, loc)
        base = expand(raw.instr.base)
        if not base:
            raise loc.error(
                "base name (%s) should not be blank; expected an image" % raw.instr.base
            )
        platform = self.target_platform
        if raw.instr.platform:
            try:
                platform = Platform.parse(expand(raw.instr.platform))
            except ValueError as exc:
                raise loc.error(str(exc)) from None
        base_stage = self.stage_index(base, loc, index, "FROM")
        stage = PlanStage(index, raw.instr.stage_name, base, base_stage, platform, loc)
        if base_stage is not None:
            config = copy.deepcopy(self.stages[base_stage].config)
            stage.deps.append(base_stage)
        elif stage.is_scratch:
            config = ImageConfig(env=["PATH=" + DEFAULT_PATH])
        else:
            config = copy.deepcopy(self.resolve_base(base, platform))
        body = self.onbuild_triggers(config, base, loc) + raw.body
        config.onbuild = []
        state = _StageState(config)
        for instr in body:
            step = self.plan_step(stage, state, instr)
            stage.steps.append(step)
        stage.config = state.config
        return stage

    def onbuild_triggers(self, config: ImageConfig, base: str, loc: Location) -> list[Instruction]:
        out: list[Instruction] = []
        for trigger in config.onbuild:
            name = "ONBUILD trigger of %s (used at %s:%d)" % (base, loc.filename, loc.start_line)
            try:
                instrs = load_instructions(trigger, name)[1]
            except DockerfileError as exc:
                raise loc.error(
                    "base image %s has a bad ONBUILD trigger: %s" % (base, exc)
                ) from None
            for instr in instrs:
                if isinstance(instr, (FromInstr, OnbuildInstr, MaintainerInstr)):
                    raise loc.error(
                        "base image %s has an ONBUILD %s trigger, which is not allowed"
                        % (base, keyword_of(instr))
                    )
                out.append(replace(instr, loc=replace(instr.loc, start_line=loc.start_line)))
        return out

    def plan_step(self, stage: PlanStage, state: _StageState, instr: Instruction) -> PlanStep:
        used: set[str] = set()
        env = state.env()
        # ARG defaults are expanded one by one in _do_arg, each seeing the ones before it.
        expander = _expander(env, instr.loc, used)
        expanded = instr if isinstance(instr, ArgInstr) else expand_instruction(instr, expander)
        arg_values = state.arg_values()
        cache_args = {k: arg_values[k] for k in sorted(used) if k in arg_values}
        step = PlanStep(
            stage=stage.index,
            index=len(stage.steps),
            kind="config",
            instruction=expanded,
            created_by="",
            identity={},
            config=state.config,
            cache_args=cache_args,
            workdir=state.config.working_dir or "/",
            user=state.config.user,
            onbuild=instr.loc.filename.startswith("ONBUILD trigger"),
        )
        handler = _HANDLERS.get(type(expanded))
        if handler is not None:
            handler(self, stage, state, step)
        step.config = copy.deepcopy(state.config)
        step.created_by = _created_by(step)
        step.identity = _identity(step)
        return step


def _created_by(step: PlanStep) -> str:
    instr = step.instruction
    if isinstance(instr, RunInstr):
        args = ["%s=%s" % item for item in step.cache_args.items()]
        prefix = "|%d %s " % (len(args), " ".join(args)) if args else ""
        return "RUN " + prefix + " ".join(step.argv)
    return instr.loc.original.strip()


def _identity(step: PlanStep) -> dict[str, object]:
    data = asdict(step.instruction)
    data.pop("loc", None)
    if isinstance(step.instruction, OnbuildInstr):
        data.pop("instruction", None)
    out: dict[str, object] = {"keyword": keyword_of(step.instruction), "instruction": data}
    if step.kind == "run":
        out.update(argv=step.argv, env=step.env, user=step.user, workdir=step.workdir)
        out["inline_files"] = step.inline_files
    if step.kind in ("copy", "add"):
        out.update(dest=step.dest, source_stage=step.source_stage, source_image=step.source_image)
    return out


# --- per-instruction effects ----------------------------------------------------------------


def _do_arg(planner: _Planner, stage: PlanStage, state: _StageState, step: PlanStep) -> None:
    instr = step.instruction
    if not isinstance(instr, ArgInstr):
        return
    expanded = []
    for definition in instr.args:
        default = definition.default
        if default is not None:
            default = _expander(state.env(), instr.loc)(default)
        expanded.append(ArgDef(definition.name, default))
        value = planner.args.lookup(definition.name)
        if value is None:
            value = default
        if value is None:
            value = planner.global_args.get(definition.name)
        state.args[definition.name] = value
        if value is not None:
            step.cache_args[definition.name] = value
    step.instruction = replace(instr, args=expanded)


def _do_env(planner: _Planner, stage: PlanStage, state: _StageState, step: PlanStep) -> None:
    instr = step.instruction
    if isinstance(instr, EnvInstr):
        for pair in instr.pairs:
            state.config.set_env(pair.key, pair.value)


def _do_label(planner: _Planner, stage: PlanStage, state: _StageState, step: PlanStep) -> None:
    instr = step.instruction
    if isinstance(instr, LabelInstr):
        for pair in instr.pairs:
            state.config.labels[pair.key] = pair.value


def _do_maintainer(planner: _Planner, stage: PlanStage, state: _StageState, step: PlanStep) -> None:
    instr = step.instruction
    if isinstance(instr, MaintainerInstr):
        state.config.author = instr.maintainer


def _do_workdir(planner: _Planner, stage: PlanStage, state: _StageState, step: PlanStep) -> None:
    instr = step.instruction
    if isinstance(instr, WorkdirInstr):
        if not instr.path:
            raise instr.loc.error("WORKDIR expanded to an empty path; expected a directory")
        state.config.working_dir = resolve_path(state.config.working_dir or "/", instr.path)
        step.workdir = state.config.working_dir


def _do_user(planner: _Planner, stage: PlanStage, state: _StageState, step: PlanStep) -> None:
    instr = step.instruction
    if isinstance(instr, UserInstr):
        if not instr.user:
            raise instr.loc.error("USER expanded to an empty value; expected user[:group]")
        state.config.user = instr.user


def _do_expose(planner: _Planner, stage: PlanStage, state: _StageState, step: PlanStep) -> None:
    instr = step.instruction
    if not isinstance(instr, ExposeInstr):
        return
    for text in instr.ports:
        for port in expose_ports(text, instr.loc):
            if port not in state.config.exposed_ports:
                state.config.exposed_ports.append(port)


def _do_volume(planner: _Planner, stage: PlanStage, state: _StageState, step: PlanStep) -> None:
    instr = step.instruction
    if not isinstance(instr, VolumeInstr):
        return
    for path in instr.paths:
        if not path.strip():
            raise instr.loc.error("VOLUME specified can not be an empty string; expected a path")
        if path not in state.config.volumes:
            state.config.volumes.append(path)


def _do_stopsignal(planner: _Planner, stage: PlanStage, state: _StageState, step: PlanStep) -> None:
    instr = step.instruction
    if isinstance(instr, StopsignalInstr):
        if not _SIGNAL_RE.match(instr.signal):
            raise instr.loc.error(
                "invalid stop signal %r; expected a name such as SIGTERM or a number" % instr.signal
            )
        state.config.stop_signal = instr.signal


def _shell_of(state: _StageState) -> list[str]:
    return list(state.config.shell or DEFAULT_SHELL)


def _do_cmd(planner: _Planner, stage: PlanStage, state: _StageState, step: PlanStep) -> None:
    instr = step.instruction
    if isinstance(instr, CmdInstr):
        state.config.cmd = _shell_of(state) + instr.command if instr.shell_form else instr.command
        state.cmd_set = True


def _do_entrypoint(planner: _Planner, stage: PlanStage, state: _StageState, step: PlanStep) -> None:
    instr = step.instruction
    if not isinstance(instr, EntrypointInstr):
        return
    if instr.shell_form:
        state.config.entrypoint = _shell_of(state) + instr.command if instr.command else None
    else:
        state.config.entrypoint = instr.command
    if not state.cmd_set:
        state.config.cmd = None


def _do_shell(planner: _Planner, stage: PlanStage, state: _StageState, step: PlanStep) -> None:
    instr = step.instruction
    if isinstance(instr, ShellInstr):
        state.config.shell = list(instr.shell)


def _do_onbuild(planner: _Planner, stage: PlanStage, state: _StageState, step: PlanStep) -> None:
    instr = step.instruction
    if isinstance(instr, OnbuildInstr):
        state.config.onbuild.append(instr.trigger)


def _do_healthcheck(
    planner: _Planner, stage: PlanStage, state: _StageState, step: PlanStep
) -> None:
    instr = step.instruction
    if not isinstance(instr, HealthcheckInstr):
        return
    health: dict[str, object] = {"Test": list(instr.test)}
    for key, seconds in (
        ("Interval", instr.interval),
        ("Timeout", instr.timeout),
        ("StartPeriod", instr.start_period),
        ("StartInterval", instr.start_interval),
    ):
        if seconds:
            health[key] = round(seconds * 1e9)
    if instr.retries:
        health["Retries"] = instr.retries
    state.config.healthcheck = health


def _do_run(planner: _Planner, stage: PlanStage, state: _StageState, step: PlanStep) -> None:
    instr = step.instruction
    if not isinstance(instr, RunInstr):
        return
    step.kind = "run"
    step.argv, step.inline_files = run_argv(instr, _shell_of(state))
    args = state.arg_values()
    step.cache_args = dict(sorted(args.items()))
    env = state.config.env_map()
    if "PATH" not in env:
        env["PATH"] = DEFAULT_PATH
    run_env = dict(args)
    run_env.update(env)
    step.env = ["%s=%s" % item for item in run_env.items()]
    step.proxy_env = [
        "%s=%s" % item for item in planner.args.proxies().items() if item[0] not in run_env
    ]
    for mount in instr.mounts:
        if not mount.from_:
            continue
        index = planner.stage_index(mount.from_, instr.loc, stage.index, "--mount from")
        if index is None:
            step.mount_images.append(mount.from_)
            _add_unique(stage.images, mount.from_)
        else:
            step.mount_stages.append(index)
            _add_unique(stage.deps, index)


def _do_copy(planner: _Planner, stage: PlanStage, state: _StageState, step: PlanStep) -> None:
    instr = step.instruction
    if not isinstance(instr, CopyInstr):
        return
    keyword = keyword_of(instr)
    step.kind = keyword.lower()
    count = len(instr.sources) + len(instr.heredoc_sources)
    if count > 1 and not instr.dest.endswith("/"):
        raise instr.loc.error(
            "when using %s with more than one source, the destination must be a directory and "
            "end with a /; expected %s/" % (keyword, instr.dest)
        )
    if not instr.dest:
        raise instr.loc.error("%s destination expanded to an empty path" % keyword)
    for src in instr.sources:
        if not src:
            raise instr.loc.error("%s source expanded to an empty path; expected a path" % keyword)
    _check_copy_sources(instr, keyword)
    if instr.add:
        step.remote_sources = [src for src in instr.sources if is_remote_source(src)]
    step.dest = resolve_path(state.config.working_dir or "/", instr.dest)
    if instr.dest.endswith("/") and not step.dest.endswith("/"):
        step.dest += "/"
    if instr.from_:
        index = planner.stage_index(instr.from_, instr.loc, stage.index, "--from")
        if index is None:
            step.source_image = instr.from_
            _add_unique(stage.images, instr.from_)
        else:
            step.source_stage = index
            _add_unique(stage.deps, index)
    expand_env = state.env()
    sources = []
    for doc in instr.heredoc_sources:
        expand = _expander(expand_env, instr.loc, raw=True)
        content = expand(doc.content) if doc.expand else doc.content
        sources.append(replace(doc, content=content))
    step.instruction = replace(instr, heredoc_sources=sources)


def is_remote_source(source: str) -> bool:
    """Whether an ADD source is a URL or a Git repository rather than a context path."""
    return bool(_REMOTE_RE.match(source))


def _check_copy_sources(instr: CopyInstr, keyword: str) -> None:
    remote = [src for src in instr.sources if is_remote_source(src)]
    if remote and not instr.add:
        raise instr.loc.error(
            "source can't be a URL for COPY (%s); expected ADD for remote sources" % remote[0]
        )
    if instr.checksum:
        if not remote or len(remote) != len(instr.sources):
            raise instr.loc.error("--checksum needs every ADD source to be an http(s) or Git URL")
        if not _CHECKSUM_RE.match(instr.checksum):
            raise instr.loc.error(
                "invalid checksum %r; expected sha256:<64 hex digits> (or sha384/sha512)"
                % instr.checksum
            )
    if instr.chmod and not _CHMOD_RE.match(instr.chmod):
        raise instr.loc.error(
            "invalid --chmod=%s; expected an octal mode such as 0755 or a symbolic mode "
            "such as u=rwx,go=rx" % instr.chmod
        )


def _add_unique(items: list, value: object) -> None:
    if value not in items:
        items.append(value)


_HANDLERS: dict[type, Callable[[_Planner, PlanStage, _StageState, PlanStep], None]] = {
    ArgInstr: _do_arg,
    EnvInstr: _do_env,
    LabelInstr: _do_label,
    MaintainerInstr: _do_maintainer,
    WorkdirInstr: _do_workdir,
    UserInstr: _do_user,
    ExposeInstr: _do_expose,
    VolumeInstr: _do_volume,
    StopsignalInstr: _do_stopsignal,
    CmdInstr: _do_cmd,
    EntrypointInstr: _do_entrypoint,
    ShellInstr: _do_shell,
    OnbuildInstr: _do_onbuild,
    HealthcheckInstr: _do_healthcheck,
    RunInstr: _do_run,
    CopyInstr: _do_copy,
}


# --- helpers used by the handlers -----------------------------------------------------------


def resolve_path(workdir: str, path: str) -> str:
    """``path`` made absolute against ``workdir`` and cleaned (``..`` stops at ``/``)."""
    joined = path if path.startswith("/") else posixpath.join(workdir or "/", path)
    return go_clean(joined)


def go_clean(path: str) -> str:
    """Go's ``path.Clean``: one slash, no ``.``, ``..`` resolved lexically, ``.`` if empty."""
    if not path:
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    text = "/".join(parts)
    if rooted:
        return "/" + text
    return text or "."


def expose_ports(text: str, loc: Location) -> list[str]:
    """``80``, ``80/udp``, ``8000-8002/tcp`` as ``port/proto`` entries."""
    match = _PORT_RE.match(text.strip())
    if not match:
        raise loc.error("invalid port %r in EXPOSE; expected port[-port][/tcp|udp|sctp]" % text)
    proto = (match.group(3) or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise loc.error("invalid protocol %r in EXPOSE; expected tcp, udp or sctp" % proto)
    first = int(match.group(1))
    last = int(match.group(2) or first)
    if not 0 < first <= last <= 65535:
        raise loc.error("invalid port range %r in EXPOSE; expected ports 1-65535" % text)
    return ["%d/%s" % (port, proto) for port in range(first, last + 1)]


def run_argv(instr: RunInstr, shell: list[str]) -> tuple[list[str], dict[str, str]]:
    """The argv of a RUN step and the inline files it needs (heredoc scripts).

    Shell form runs ``SHELL + [command]``. A lone heredoc (``RUN <<EOF``) runs its
    body with the shell, or, when the body starts with ``#!``, as an executable
    file at ``/dev/pipes/<name>``; other heredoc uses are given to the shell as one
    script, the way the shell itself would read them.
    """
    if not instr.shell_form:
        return list(instr.command), {}
    command = instr.command[0] if instr.command else ""
    if not instr.heredocs:
        return [*shell, command], {}
    first = instr.heredocs[0]
    if parse_heredoc(command) is not None:
        body = first.body()
        if body.startswith("#!"):
            path = "/dev/pipes/" + first.name
            return [path], {path: body}
        return [*shell, body], {}
    script = command
    for doc in instr.heredocs:
        script += "\n" + doc.content + doc.name
    return [*shell, script], {}


def _closure(stages: list[PlanStage], target: int) -> list[int]:
    seen: set[int] = set()
    todo = [target]
    while todo:
        index = todo.pop()
        if index in seen:
            continue
        seen.add(index)
        todo.extend(stages[index].deps)
    return sorted(seen)


def _target_index(raw: list[_RawStage], target: str | None) -> int:
    if not target:
        return len(raw) - 1
    for index, stage in enumerate(raw):
        if stage.instr.stage_name == target.lower():
            return index
    names = ", ".join(s.instr.stage_name for s in raw if s.instr.stage_name) or "none"
    raise DockerfileError(
        "target stage %r could not be found; the named stages are: %s" % (target, names),
        raw[0].instr.loc.filename,
    )


def plan_build(
    text: str,
    *,
    filename: str = "Dockerfile",
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
    target_platform: Platform | None = None,
    build_platform: Platform | None = None,
    resolve_base: BaseResolver | None = None,
) -> BuildPlan:
    """Plan the build of ``target`` (default: the last stage) of a Dockerfile.

    ``resolve_base(ref, platform)`` returns the config of an external base image
    (its Env, WorkingDir, OnBuild, ...); without it bases are taken as empty,
    which is exact for ``FROM scratch`` and for Dockerfiles that do not rely on
    their base image's environment. Raises DockerfileError naming the line.
    """
    directives, instrs = load_instructions(text, filename)
    meta, raw = split_stages(instrs)
    build = build_platform or Platform.host()
    target_pf = target_platform or build
    auto = {**build.args("BUILD"), **target_pf.args("TARGET")}
    args = _Args(build_args or {})
    global_args = resolve_global_args(meta, args, auto)
    target_index = _target_index(raw, target)

    # First pass without base configs: which stages does the target need?
    def planner_for(args: _Args, resolver: BaseResolver) -> _Planner:
        return _Planner(
            raw,
            global_args=global_args,
            args=args,
            target_platform=target_pf,
            build_platform=build,
            resolve_base=resolver,
        )

    light = planner_for(_Args(build_args or {}), _no_base).run()
    needed = _closure(light, target_index)

    # Second pass with the real base configs, for the needed stages only.
    planner = planner_for(args, resolve_base or _no_base)
    for index, stage_raw in enumerate(raw):
        if index in needed:
            planner.stages.append(planner.plan_stage(index, stage_raw))
        else:
            planner.stages.append(light[index])
    stages = planner.stages
    for index in needed:
        if stages[index].deps != light[index].deps:
            raise stages[index].loc.error(
                "a COPY --from or --mount from= value depends on the base image's environment; "
                "expected it to depend on build args only"
            )
    return BuildPlan(
        filename=filename,
        directives=directives,
        stages=stages,
        target=target_index,
        needed=needed,
        global_args={k: v for k, v in global_args.items() if k not in auto or k in args.given},
        unused_build_args=args.unused(),
        warnings=planner.warnings,
    )


# --- cache key --------------------------------------------------------------------------------


def step_cache_key(parent: str, step: PlanStep, sources_digest: str = "") -> str:
    """Cache key of a step: parent chain id, instruction after substitution, args, sources.

    ``parent`` is the chain id (or cache key) of the step before, or the base
    image's digest for the first step; ``sources_digest`` the content digest of
    the COPY/ADD sources (``dockerfile_context.sources_digest``), or of the source
    stage's result for ``COPY --from``. The same inputs always give the same key.
    """
    payload = {
        "parent": parent,
        "step": step.identity,
        "build_args": sorted(step.cache_args.items()),
        "sources": sources_digest,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()
