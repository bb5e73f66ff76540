"""Typed Dockerfile instructions: flags, arguments, errors and what gets expanded."""

from __future__ import annotations

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_instructions import (
    ArgDef,
    ArgInstr,
    CmdInstr,
    CopyInstr,
    EntrypointInstr,
    EnvInstr,
    FromInstr,
    HealthcheckInstr,
    Instruction,
    KeyValue,
    Mount,
    OnbuildInstr,
    RunInstr,
    WorkdirInstr,
    expand_instruction,
    instruction_from_node,
    parse_duration,
)
from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_parser import (
    DockerfileError,
    parse_dockerfile,
)
from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_shell import ShellLex


def one(line: str) -> Instruction:
    """The typed form of the instruction after ``FROM a``."""
    result = parse_dockerfile("FROM a\n" + line + "\n", "df")
    return instruction_from_node(result.nodes[1], "df")


def test_from_with_stage_name_and_platform() -> None:
    result = parse_dockerfile("FROM --platform=$BUILDPLATFORM golang:1.22 AS Build\n")
    instr = instruction_from_node(result.nodes[0])
    assert instr == FromInstr(instr.loc, "golang:1.22", "build", "$BUILDPLATFORM")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("FROM a b", "FROM requires either one or three arguments"),
        ("FROM a AS 1x", "invalid name for build stage '1x'"),
        ("FROM a IS b", "FROM requires either one or three arguments"),
        ("COPY --chown x /y --bogus", "missing a value on flag --chown"),
        ("COPY --bogus=1 x /y", "unknown flag --bogus for COPY; expected --chmod, --chown"),
        ("COPY --from=a --from=b x /y", "duplicate flag specified: --from"),
        ("COPY --link=maybe x /y", "expecting a boolean value for flag --link"),
        ("COPY onlyone", "COPY requires at least 2 arguments"),
        ("COPY x <<EOF\nbody\nEOF", "cannot accept a heredoc as a destination"),
        ("ADD --from=a x /y", "unknown flag --from for ADD"),
        ("ENV --x=1 a=b", "unknown flag --x for ENV; expected no flags"),
        ("RUN", "RUN requires at least 1 argument"),
        ("RUN --network=bridge x", "unsupported network mode 'bridge'"),
        ("RUN --mount=type=nfs,target=/x x", "unsupported mount type 'nfs'"),
        ("RUN --mount=type=cache x", "a target is required"),
        ("RUN --mount=type=cache,target=/x,sharing=all x", "unsupported sharing value 'all'"),
        ("RUN --mount=type=bind,target=/x,color=red x", "unexpected key 'color'"),
        ("SHELL /bin/bash -c", "SHELL requires the arguments as a JSON array"),
        ("HEALTHCHECK", "HEALTHCHECK requires at least 1 argument"),
        ("HEALTHCHECK CONNECT TCP 7000", "unknown type 'CONNECT' in HEALTHCHECK"),
        ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
        ("HEALTHCHECK CMD", "missing command after HEALTHCHECK CMD"),
        ("HEALTHCHECK --interval=0.5ms CMD x", "cannot be less than 1ms"),
        ("HEALTHCHECK --interval=5 CMD x", "invalid duration '5'"),
        ("HEALTHCHECK --retries=-1 CMD x", "--retries cannot be negative"),
        ("ONBUILD ONBUILD RUN x", "chaining ONBUILD via ONBUILD ONBUILD isn't allowed"),
        ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
        ("ONBUILD MAINTAINER x", "MAINTAINER isn't allowed as an ONBUILD trigger"),
        ('VOLUME [""]', "VOLUME specified can not be an empty string"),
        ("BOGUS x", "unknown instruction BOGUS; expected one of ADD, ARG"),
        ("USER", "USER requires at least 1 argument"),
    ],
)
def test_bad_instruction_is_rejected_naming_the_line(line: str, message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        one(line)
    assert info.value.line == 2
    assert message in str(info.value)
    assert str(info.value).startswith("df:2: ")


def test_run_shell_and_exec_forms() -> None:
    shell = one("RUN echo $HOME && ls")
    exec_form = one('RUN ["ls", "-l"]')
    assert isinstance(shell, RunInstr)
    assert isinstance(exec_form, RunInstr)
    assert (shell.command, shell.shell_form) == (["echo $HOME && ls"], True)
    assert (exec_form.command, exec_form.shell_form) == (["ls", "-l"], False)


def test_run_mounts_network_and_security() -> None:
    instr = one(
        "RUN --mount=type=cache,target=/root/.cache,id=pip,sharing=locked,mode=0755,uid=1 "
        "--mount=type=bind,from=build,source=/out,target=/in,rw "
        "--mount=type=secret,id=token,required --network=none --security=sandbox make"
    )
    assert isinstance(instr, RunInstr)
    cache, bind, secret = instr.mounts
    assert cache == Mount("cache", "/root/.cache", id="pip", sharing="locked", mode=0o755, uid=1)
    assert bind == Mount("bind", "/in", source="/out", from_="build", readonly=False)
    assert (secret.type, secret.id, secret.required, secret.target) == ("secret", "token", True, "")
    assert (instr.network, instr.security) == ("none", "sandbox")


def test_bind_mount_is_readonly_by_default() -> None:
    instr = one("RUN --mount=target=/src make")
    assert isinstance(instr, RunInstr)
    assert instr.mounts[0].type == "bind"
    assert instr.mounts[0].readonly is True


def test_copy_flags() -> None:
    instr = one(
        "COPY --from=build --chown=1:2 --chmod=0644 --link --parents "
        "--exclude=*.md --exclude=tmp/ a b /dst/"
    )
    assert isinstance(instr, CopyInstr)
    assert (instr.sources, instr.dest, instr.from_) == (["a", "b"], "/dst/", "build")
    assert (instr.chown, instr.chmod, instr.link, instr.parents) == ("1:2", "0644", True, True)
    assert instr.excludes == ["*.md", "tmp/"]
    assert instr.add is False


def test_add_flags() -> None:
    instr = one("ADD --checksum=sha256:abc --keep-git-dir=true --link=false https://x/y.tgz /z")
    assert isinstance(instr, CopyInstr)
    assert instr.add is True
    assert (instr.checksum, instr.keep_git_dir, instr.link) == ("sha256:abc", True, False)


def test_copy_heredoc_sources() -> None:
    result = parse_dockerfile(
        "FROM a\nCOPY <<one <<'two' x /dst/\nhello $v\none\nraw $v\ntwo\n", "df"
    )
    instr = instruction_from_node(result.nodes[1], "df")
    assert isinstance(instr, CopyInstr)
    assert instr.sources == ["x"]
    found = [(s.name, s.content, s.expand) for s in instr.heredoc_sources]
    assert found == [("one", "hello $v\n", True), ("two", "raw $v\n", False)]


def test_cmd_entrypoint_forms() -> None:
    assert one("CMD run me") == CmdInstr(one("CMD run me").loc, ["run me"], True)
    instr = one('ENTRYPOINT ["/bin/app", "-v"]')
    assert isinstance(instr, EntrypointInstr)
    assert (instr.command, instr.shell_form) == (["/bin/app", "-v"], False)
    empty = one("CMD []")
    assert isinstance(empty, CmdInstr)
    assert (empty.command, empty.shell_form) == ([], False)


def test_env_both_forms() -> None:
    legacy = one("ENV PATH /usr/bin:/bin")
    modern = one('ENV A=1 B="two words"')
    assert isinstance(legacy, EnvInstr)
    assert isinstance(modern, EnvInstr)
    assert legacy.pairs == [KeyValue("PATH", "/usr/bin:/bin", legacy=True)]
    assert modern.pairs == [KeyValue("A", "1"), KeyValue("B", '"two words"')]


def test_arg_with_and_without_default() -> None:
    instr = one("ARG A B=2 C=")
    assert isinstance(instr, ArgInstr)
    assert instr.args == [ArgDef("A"), ArgDef("B", "2"), ArgDef("C", "")]


def test_healthcheck_flags_and_forms() -> None:
    instr = one(
        "HEALTHCHECK --interval=1m30s --timeout=3s --start-period=0s --start-interval=500ms "
        "--retries=4 CMD curl -f http://localhost/"
    )
    assert isinstance(instr, HealthcheckInstr)
    assert instr.test == ["CMD-SHELL", "curl -f http://localhost/"]
    assert (instr.interval, instr.timeout, instr.start_period) == (90.0, 3.0, 0.0)
    assert (instr.start_interval, instr.retries) == (0.5, 4)
    none = one("HEALTHCHECK NONE")
    assert isinstance(none, HealthcheckInstr)
    assert none.test == ["NONE"]
    exec_form = one('HEALTHCHECK CMD ["/bin/check", "-q"]')
    assert isinstance(exec_form, HealthcheckInstr)
    assert exec_form.test == ["CMD", "/bin/check", "-q"]


def test_onbuild_trigger_text_and_inner_instruction() -> None:
    instr = one("ONBUILD COPY --chown=1 . /src")
    assert isinstance(instr, OnbuildInstr)
    assert instr.trigger == "COPY --chown=1 . /src"
    assert isinstance(instr.instruction, CopyInstr)
    assert instr.instruction.chown == "1"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("30s", 30.0), ("1m30s", 90.0), ("1.5h", 5400.0), ("250ms", 0.25)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def _expand(instr: Instruction) -> Instruction:
    env = {"v": "X", "dir": "/opt"}
    lex = ShellLex()
    return expand_instruction(instr, lambda word: lex.process_word(word, env))


def test_expansion_applies_to_copy_args_and_flags() -> None:
    instr = _expand(one("COPY --chown=$v --from=$v --exclude=$v.md src-$v ${dir}/"))
    assert isinstance(instr, CopyInstr)
    assert (instr.sources, instr.dest, instr.chown, instr.from_) == (["src-X"], "/opt/", "X", "X")
    assert instr.excludes == ["X.md"]


def test_expansion_leaves_run_cmd_entrypoint_alone() -> None:
    for line in ("RUN echo $v", "CMD echo $v", 'ENTRYPOINT ["$v"]'):
        assert _expand(one(line)) == one(line)


def test_expansion_of_env_removes_quotes_and_expands_mounts() -> None:
    env = _expand(one("ENV A=\"$v y\" B='$v'"))
    assert isinstance(env, EnvInstr)
    assert env.pairs == [KeyValue("A", "X y"), KeyValue("B", "$v")]
    run = _expand(one("RUN --mount=type=cache,target=$dir/c,id=$v make"))
    assert isinstance(run, RunInstr)
    assert (run.mounts[0].target, run.mounts[0].id) == ("/opt/c", "X")
    workdir = _expand(one("WORKDIR $dir/app"))
    assert isinstance(workdir, WorkdirInstr)
    assert workdir.path == "/opt/app"
