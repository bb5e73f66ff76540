"""Dockerfile build plan: args, stages, target closure, image config and cache keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_instructions import (
    CopyInstr,
)
from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_parser import (
    DockerfileError,
)
from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_plan import (
    BuildPlan,
    ImageConfig,
    PlanStep,
    Platform,
    go_clean,
    plan_build,
    step_cache_key,
)

AMD64 = Platform("linux", "amd64")
ARM = Platform("linux", "arm", "v7")


def plan(text: str, **kwargs: object) -> BuildPlan:
    kwargs.setdefault("build_platform", AMD64)
    return plan_build(text, filename="df", **kwargs)  # type: ignore[arg-type]


def steps(text: str, **kwargs: object) -> list[PlanStep]:
    return plan(text, **kwargs).target_stage.steps


def run_env(step: PlanStep) -> dict[str, str]:
    return dict(item.split("=", 1) for item in step.env)


# --- build args ----------------------------------------------------------------------------


def test_global_arg_expands_from_and_build_arg_overrides_default() -> None:
    text = "ARG TAG=3.19\nARG IMG=alpine:$TAG\nFROM $IMG\n"
    assert plan(text).target_stage.base == "alpine:3.19"
    assert plan(text, build_args={"TAG": "3.20"}).target_stage.base == "alpine:3.20"


def test_global_arg_needs_redeclaring_inside_stage() -> None:
    text = "ARG V=1\nFROM a\nRUN echo\nARG V\nRUN echo\n"
    first, _arg, second = steps(text)
    assert "V" not in run_env(first)
    assert run_env(second)["V"] == "1"
    assert second.cache_args == {"V": "1"}


def test_stage_arg_default_and_build_arg() -> None:
    text = "FROM a\nARG V=default\nWORKDIR /w/$V\n"
    assert plan(text).target_stage.config.working_dir == "/w/default"
    assert plan(text, build_args={"V": "given"}).target_stage.config.working_dir == "/w/given"


def test_arg_without_value_is_unset() -> None:
    text = "FROM a\nARG V\nENV X=${V:-none}\n"
    assert plan(text).target_stage.config.env == ["X=none"]


def test_env_overrides_arg_of_same_name() -> None:
    text = "FROM a\nARG V=arg\nENV V=env\nWORKDIR /$V\nRUN echo\n"
    stage = plan(text, build_args={"V": "given"}).target_stage
    assert stage.config.working_dir == "/env"
    assert run_env(stage.steps[-1])["V"] == "env"


def test_env_line_uses_values_from_before_the_line() -> None:
    text = "FROM a\nENV A=old\nENV A=new B=$A\n"
    assert plan(text).target_stage.config.env == ["A=new", "B=old"]


def test_platform_args_in_global_scope_and_after_declaration() -> None:
    text = (
        "FROM --platform=$BUILDPLATFORM a AS build\nARG TARGETARCH\nARG TARGETVARIANT\n"
        "RUN echo $TARGETARCH\nENV T=$TARGETARCH$TARGETVARIANT B=$BUILDARCH\n"
    )
    stage = plan(text, target_platform=ARM).target_stage
    assert stage.platform == AMD64
    assert run_env(stage.steps[2])["TARGETARCH"] == "arm"
    assert stage.config.env == ["T=armv7", "B="]


def test_from_platform_uses_target_platform_by_default() -> None:
    assert plan("FROM a\n", target_platform=ARM).target_stage.platform == ARM


def test_proxy_args_reach_run_without_declaration_and_stay_out_of_cache() -> None:
    step = steps("FROM a\nRUN apt-get update\n", build_args={"http_proxy": "http://p:3128"})[0]
    assert step.proxy_env == ["http_proxy=http://p:3128"]
    assert "http_proxy" not in run_env(step)
    assert step.cache_args == {}
    other = steps("FROM a\nRUN apt-get update\n", build_args={"http_proxy": "http://q"})[0]
    assert step_cache_key("p", step) == step_cache_key("p", other)


def test_declared_proxy_arg_is_an_ordinary_arg() -> None:
    step = steps("FROM a\nARG http_proxy\nRUN x\n", build_args={"http_proxy": "http://p"})[-1]
    assert (run_env(step)["http_proxy"], step.proxy_env) == ("http://p", [])
    assert step.cache_args == {"http_proxy": "http://p"}


def test_run_history_names_the_args_in_scope() -> None:
    step = steps("FROM a\nARG V=1\nRUN make\n")[-1]
    assert step.created_by == "RUN |1 V=1 /bin/sh -c make"


def test_unused_build_args_are_reported() -> None:
    result = plan("ARG USED\nFROM a\n", build_args={"USED": "1", "OTHER": "2", "no_proxy": "x"})
    assert result.unused_build_args == ["OTHER"]


# --- stages and target ---------------------------------------------------------------------

MULTI = """\
FROM alpine AS base
RUN echo base
FROM base AS build
COPY --from=tools /bin/tool /usr/bin/
RUN --mount=type=bind,from=deps,target=/deps make
FROM busybox AS unrelated
RUN echo no
FROM scratch AS final
COPY --from=build /out /
COPY --from=1 /out2 /
COPY --from=registry.example/img:1 /x /x
"""


def test_target_closure_follows_from_copy_from_and_mount_from() -> None:
    text = "FROM a AS tools\nFROM a AS deps\n" + MULTI
    result = plan(text)
    names = [result.stages[i].name for i in result.needed]
    assert names == ["tools", "deps", "base", "build", "final"]
    assert result.target_stage.is_scratch
    assert result.base_images() == ["a", "alpine", "registry.example/img:1"]


def test_target_selects_a_stage_and_its_dependencies_only() -> None:
    result = plan(MULTI, target="Unrelated")
    assert [result.stages[i].name for i in result.needed] == ["unrelated"]
    assert result.target_stage.name == "unrelated"


def test_copy_from_index_and_unknown_name_is_an_image() -> None:
    copies = [s for s in plan(MULTI).target_stage.steps if s.kind == "copy"]
    assert [(c.source_stage, c.source_image) for c in copies] == [
        (1, ""),
        (1, ""),
        (None, "registry.example/img:1"),
    ]


def test_copy_from_is_expanded_with_args() -> None:
    text = "FROM a AS one\nFROM a\nARG SRC=one\nCOPY --from=$SRC /x /x\n"
    result = plan(text)
    assert result.target_stage.steps[-1].source_stage == 0
    assert result.needed == [0, 1]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("FROM a\nCOPY --from=1 /x /x\n", 2, "refers to stage 1, which is not defined before"),
        ("FROM a\nCOPY --from=later /x /x\nFROM b AS later\n", 2, "defined later (line 3)"),
        ("FROM a AS x\nFROM b AS X\n", 2, "duplicate stage name 'x'"),
        ("RUN x\nFROM a\n", 1, "RUN before the first FROM"),
        ("ARG A\n", 1, "no FROM instruction"),
        ("ARG B=\nFROM $B\n", 2, "base name ($B) should not be blank"),
        ("FROM a\nCOPY a b /dst\n", 2, "must be a directory and end with a /"),
        ("FROM a\nEXPOSE 80/http\n", 2, "invalid protocol 'http'"),
        ("FROM a\nEXPOSE 0-3\n", 2, "invalid port range"),
        ("FROM a\nSTOPSIGNAL kill -9\n", 2, "invalid stop signal"),
        ("FROM a\nENV A=${B\n", 2, "missing '}'"),
        ("FROM --platform=a/b/c/d x\n", 1, "invalid platform"),
        ("FROM a\nCOPY https://x/y /y\n", 2, "source can't be a URL for COPY"),
        ("FROM a\nADD --checksum=sha256:00 https://x/y /y\n", 2, "invalid checksum"),
        ("FROM a\nADD --checksum=sha256:00 local /y\n", 2, "--checksum needs every ADD"),
        ("FROM a\nCOPY --chmod=999 x /y\n", 2, "invalid --chmod=999"),
    ],
)
def test_plan_errors_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        plan(text)
    assert info.value.line == line
    assert message in str(info.value)


def test_unknown_target_lists_the_stage_names() -> None:
    with pytest.raises(DockerfileError, match=r"target stage .nope. could not be found.*base"):
        plan(MULTI, target="nope")


# --- image config --------------------------------------------------------------------------


def test_workdir_relative_chain_and_copy_destination() -> None:
    text = "FROM a\nWORKDIR /app\nWORKDIR sub/../src\nCOPY x ./\nCOPY y z\n"
    stage = plan(text).target_stage
    assert stage.config.working_dir == "/app/src"
    assert [s.dest for s in stage.steps if s.kind == "copy"] == ["/app/src/", "/app/src/z"]


def test_entrypoint_resets_inherited_cmd() -> None:
    base = ImageConfig(cmd=["/bin/sh"], entrypoint=None)
    config = plan('FROM a\nENTRYPOINT ["app"]\n', resolve_base=lambda r, p: base).target_stage
    assert (config.config.entrypoint, config.config.cmd) == (["app"], None)
    config = plan('FROM a\nCMD ["x"]\nENTRYPOINT ["app"]\n').target_stage
    assert (config.config.entrypoint, config.config.cmd) == (["app"], ["x"])


def test_shell_form_uses_shell_instruction() -> None:
    text = 'FROM a\nSHELL ["/bin/bash", "-eo", "pipefail", "-c"]\nRUN a | b\nCMD serve\n'
    stage = plan(text).target_stage
    assert stage.steps[1].argv == ["/bin/bash", "-eo", "pipefail", "-c", "a | b"]
    assert stage.config.cmd == ["/bin/bash", "-eo", "pipefail", "-c", "serve"]


def test_config_fields_end_up_in_oci_config() -> None:
    text = (
        'FROM a\nLABEL a=1 b="two words"\nEXPOSE 80 53/udp 8000-8001\nVOLUME /data /x\n'
        'VOLUME ["/logs"]\nUSER app:app\nSTOPSIGNAL SIGINT\nMAINTAINER me\n'
        "HEALTHCHECK --interval=10s --retries=2 CMD true\n"
    )
    config = plan(text).target_stage.config
    oci = config.to_oci()
    assert oci["Labels"] == {"a": "1", "b": "two words"}
    assert oci["ExposedPorts"] == {"53/udp": {}, "80/tcp": {}, "8000/tcp": {}, "8001/tcp": {}}
    assert oci["Volumes"] == {"/data": {}, "/x": {}, "/logs": {}}
    assert (oci["User"], oci["StopSignal"], config.author) == ("app:app", "SIGINT", "me")
    assert oci["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 10**10, "Retries": 2}
    assert ImageConfig.from_oci(oci).to_oci() == oci


def test_healthcheck_none() -> None:
    config = plan("FROM a\nHEALTHCHECK NONE\n").target_stage.config
    assert config.healthcheck == {"Test": ["NONE"]}


def test_base_image_env_is_used_for_expansion() -> None:
    def resolve(ref: str, platform: Platform) -> ImageConfig:
        assert (ref, platform) == ("golang:1.22", AMD64)
        return ImageConfig(env=["GOPATH=/go", "PATH=/go/bin:/usr/bin"])

    stage = plan("FROM golang:1.22\nWORKDIR $GOPATH/src\nRUN go build\n", resolve_base=resolve)
    target = stage.target_stage
    assert target.config.working_dir == "/go/src"
    assert run_env(target.steps[1])["PATH"] == "/go/bin:/usr/bin"


# --- ONBUILD --------------------------------------------------------------------------------


def test_onbuild_is_stored_and_applied_to_a_child_stage() -> None:
    text = "FROM a AS parent\nONBUILD ENV FROM_PARENT=1\nONBUILD RUN make\nFROM parent\nRUN next\n"
    result = plan(text)
    assert result.stages[0].config.onbuild == ["ENV FROM_PARENT=1", "RUN make"]
    child = result.target_stage
    assert [(s.kind, s.onbuild) for s in child.steps] == [
        ("config", True),
        ("run", True),
        ("run", False),
    ]
    assert child.config.onbuild == []
    assert "FROM_PARENT=1" in child.config.env


def test_onbuild_from_a_base_image_config() -> None:
    base = ImageConfig(onbuild=["COPY . /src"])
    child = plan("FROM onbuild-image\n", resolve_base=lambda r, p: base).target_stage
    first = child.steps[0].instruction
    assert isinstance(first, CopyInstr)
    assert (first.sources, first.dest) == (["."], "/src")


def test_bad_onbuild_trigger_in_base_image_is_reported_at_from() -> None:
    base = ImageConfig(onbuild=["FROM x"])
    with pytest.raises(DockerfileError, match="ONBUILD FROM trigger") as info:
        plan("ARG A\nFROM onbuild-image\n", resolve_base=lambda r, p: base)
    assert info.value.line == 2


# --- heredocs -------------------------------------------------------------------------------


def test_run_heredoc_forms() -> None:
    text = (
        "FROM a\nRUN <<EOF\necho one\nEOF\n"
        "RUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n"
        "RUN cat <<A > /x\nbody\nA\n"
    )
    plain, shebang, complex_ = steps(text)
    assert plain.argv == ["/bin/sh", "-c", "echo one\n"]
    assert shebang.argv == ["/dev/pipes/EOF"]
    assert shebang.inline_files == {"/dev/pipes/EOF": "#!/usr/bin/env python3\nprint(1)\n"}
    assert complex_.argv == ["/bin/sh", "-c", "cat <<A > /x\nbody\nA"]


def test_copy_heredoc_expands_unless_delimiter_quoted() -> None:
    text = 'FROM a\nARG V=x\nCOPY <<one <<"two" /etc/\n\'$V\' "${V}" \\$V\none\n$V\ntwo\n'
    instr = steps(text)[-1].instruction
    assert isinstance(instr, CopyInstr)
    assert [s.content for s in instr.heredoc_sources] == ["'x' \"x\" $V\n", "$V\n"]


def test_onbuild_heredoc_trigger_keeps_its_body() -> None:
    text = "FROM a AS p\nONBUILD RUN <<EOF\nmake all\nEOF\nFROM p\n"
    result = plan(text)
    assert result.stages[0].config.onbuild == ["RUN <<EOF\nmake all\nEOF"]
    assert result.target_stage.steps[0].argv == ["/bin/sh", "-c", "make all\n"]


# --- cache keys -----------------------------------------------------------------------------

CACHE = "FROM a\nARG V=1\nARG W=1\nCOPY src-$V /dst\nRUN make\n"


def _keys(build_args: dict[str, str], sources: str = "sha256:s", parent: str = "p") -> list[str]:
    out = []
    for step in steps(CACHE, build_args=build_args):
        parent = step_cache_key(parent, step, sources if step.kind == "copy" else "")
        out.append(parent)
    return out


def test_cache_key_is_stable_for_the_same_inputs() -> None:
    assert _keys({}) == _keys({})
    assert all(key.startswith("sha256:") for key in _keys({}))


def test_cache_key_changes_from_the_step_using_a_changed_arg() -> None:
    base, changed = _keys({}), _keys({"W": "2"})
    assert base[0] == changed[0]
    assert base[1] != changed[1]


def test_cache_key_of_copy_follows_the_used_arg_and_source_digest() -> None:
    base = _keys({})
    assert _keys({}, sources="sha256:other")[2] != base[2]
    assert _keys({}, sources="sha256:other")[:2] == base[:2]
    assert _keys({}, parent="q")[0] != base[0]


def test_run_cache_key_includes_all_args_in_scope() -> None:
    run = steps(CACHE, build_args={"W": "2"})[-1]
    assert run.cache_args == {"V": "1", "W": "2"}


@pytest.mark.parametrize(
    ("path", "clean"),
    [("", "."), ("/", "/"), ("a//b/./c/", "a/b/c"), ("/../a/..", "/"), ("../x", "../x")],
)
def test_go_clean(path: str, clean: str) -> None:
    assert go_clean(path) == clean


def test_add_remote_sources_and_valid_flags() -> None:
    digest = "sha256:" + "0" * 64
    step = steps(
        "FROM a\nADD --checksum=%s https://example.com/x.tgz /opt/\n" % digest
        + "ADD --chmod=u=rwx,go=rx git@github.com:o/r.git local.tar /src/\n"
    )
    assert step[0].remote_sources == ["https://example.com/x.tgz"]
    assert step[1].remote_sources == ["git@github.com:o/r.git"]


def test_one_arg_line_is_read_left_to_right() -> None:
    text = "ARG A=1 B=$A\nFROM img:$B\nARG C=2 D=${C}${B:-x}\nENV D=$D\n"
    stage = plan(text).target_stage
    assert stage.base == "img:1"
    assert stage.config.env == ["D=2x"]


def test_escape_directive_applies_to_expansion() -> None:
    text = "# escape=`\nFROM a\nENV DIR=C:\\app B=`$DIR\nWORKDIR $DIR\\bin\n"
    stage = plan(text).target_stage
    assert stage.config.env == ["DIR=C:\\app", "B=$DIR"]
    assert stage.config.working_dir == "/C:\\app\\bin"


# --- robustness over the parser corpus ---------------------------------------------------------

_SHARED = Path(
    os.environ.get("LAPIS_SHARED", Path(__file__).resolve().parents[4].parent / "shared")
)
_CORPUS = _SHARED / "conformance" / "dockerfile-parser" / "testfiles"
_CORPUS_CASES = sorted(p.name for p in _CORPUS.iterdir()) if _CORPUS.is_dir() else ["absent"]


@pytest.mark.parametrize("case", _CORPUS_CASES)
def test_every_prefix_of_a_corpus_file_plans_or_fails_cleanly(shared: Path, case: str) -> None:
    path = shared / "conformance" / "dockerfile-parser" / "testfiles" / case / "Dockerfile"
    if not path.is_file():
        pytest.skip("conformance corpus case %s is not present" % case)
    lines = path.read_text().splitlines(keepends=True)
    for end in range(1, len(lines) + 1):
        # Any exception other than DockerfileError fails the test.
        try:
            plan_build("".join(lines[:end]), filename=case, build_platform=AMD64)
        except DockerfileError as exc:
            assert exc.line >= 1
            assert str(exc).startswith("%s:%d: " % (case, exc.line))
