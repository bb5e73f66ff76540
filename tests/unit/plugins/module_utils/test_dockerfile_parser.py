"""Dockerfile parser: the BuildKit conformance corpus and our own tables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_parser import (
    DockerfileError,
    Heredoc,
    decode_dockerfile,
    go_quote,
    parse_dockerfile,
    render,
)

CORPUS = "conformance/dockerfile-parser"
_SHARED = Path(
    os.environ.get("LAPIS_SHARED", Path(__file__).resolve().parents[4].parent / "shared")
)


def _cases(kind: str) -> list[str]:
    folder = _SHARED / CORPUS / kind
    names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return names or ["corpus-absent"]


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


@pytest.mark.parametrize("case", _cases("testfiles"))
def test_corpus_positive_case_parses_to_expected_dump(shared: Path, case: str) -> None:
    folder = shared / CORPUS / "testfiles" / case
    if not folder.is_dir():
        pytest.skip("conformance corpus case %s is not present" % case)
    result = parse_dockerfile(_read(folder / "Dockerfile"), str(folder / "Dockerfile"))
    assert render(result) == _read(folder / "result")


@pytest.mark.parametrize("case", _cases("testfiles-negative"))
def test_corpus_negative_case_is_rejected_naming_the_line(shared: Path, case: str) -> None:
    folder = shared / CORPUS / "testfiles-negative" / case
    if not folder.is_dir():
        pytest.skip("conformance corpus case %s is not present" % case)
    name = str(folder / "Dockerfile")
    with pytest.raises(DockerfileError) as info:
        parse_dockerfile(_read(folder / "Dockerfile"), name)
    assert info.value.line >= 1
    assert str(info.value).startswith("%s:%d: " % (name, info.value.line))


def test_corpus_line_numbers(shared: Path) -> None:
    path = shared / CORPUS / "testfile-line" / "Dockerfile"
    result = parse_dockerfile(_read(path), str(path))
    spans = [(n.instruction, n.start_line, n.end_line) for n in result.nodes]
    assert spans == [("from", 5, 5), ("env", 11, 12), ("run", 17, 31)]


# --- directives, comments, continuations ----------------------------------------------------


def test_escape_directive_backtick_continues_lines() -> None:
    result = parse_dockerfile("# escape=`\nFROM a\nRUN dir `\n  c:\\\n")
    assert render(result) == '(from "a")\n(run "dir   c:\\\\")\n'
    assert result.escape == "`"
    assert result.directives == {"escape": "`"}


def test_all_directives_are_read_case_insensitively() -> None:
    text = "# Syntax=docker/dockerfile:1\n# CHECK=skip=all\n#escape=\\\nFROM a\n"
    result = parse_dockerfile(text)
    assert result.directives == {
        "syntax": "docker/dockerfile:1",
        "check": "skip=all",
        "escape": "\\",
    }


def test_shebang_line_does_not_end_directives() -> None:
    result = parse_dockerfile("#!/usr/bin/env buildctl\n# escape=`\nFROM a\n")
    assert result.escape == "`"


def test_directive_after_instruction_is_a_comment() -> None:
    result = parse_dockerfile("FROM a\n# escape=`\nRUN x \\\n y\n")
    assert result.escape == "\\"
    assert render(result).endswith('(run "x  y")\n')


def test_unknown_directive_ends_directive_block() -> None:
    result = parse_dockerfile("# foo=bar\n# escape=`\nFROM a\n")
    assert result.escape == "\\"
    assert result.directives == {}


def test_repeated_directive_is_an_error_naming_line() -> None:
    with pytest.raises(DockerfileError, match=r"^df:2: only one escape parser directive"):
        parse_dockerfile("# escape=`\n# escape=\\\nFROM a\n", "df")


def test_invalid_escape_character_is_rejected() -> None:
    with pytest.raises(DockerfileError, match=r"df:1: invalid escape character 'x'"):
        parse_dockerfile("# escape=x\nFROM a\n", "df")


def test_crlf_and_bom_are_removed() -> None:
    result = parse_dockerfile("\ufeffFROM a\r\nRUN b \\\r\n c\r\n")
    assert render(result) == '(from "a")\n(run "b  c")\n'


def test_comments_before_instruction_are_kept_on_node() -> None:
    result = parse_dockerfile("# first\n# second\nFROM a\n")
    assert result.nodes[0].comments == ["first", "second"]


def test_empty_continuation_line_gives_warning() -> None:
    result = parse_dockerfile("FROM a\nRUN x \\\n\n y\n")
    assert render(result).endswith('(run "x  y")\n')
    assert result.warnings and "Dockerfile:2" in result.warnings[0]


def test_unknown_instruction_is_kept_with_empty_argument() -> None:
    assert render(parse_dockerfile("FROM a\nFOO bar\n")) == '(from "a")\n(foo "")\n'


# --- heredocs -----------------------------------------------------------------------------


def test_run_heredoc_body_is_read_and_not_dumped() -> None:
    text = "FROM a\nRUN <<EOF\necho $HOME\nEOF\nRUN next\n"
    result = parse_dockerfile(text)
    assert render(result) == '(from "a")\n(run "<<EOF")\n(run "next")\n'
    run = result.nodes[1]
    assert run.heredocs == [Heredoc("EOF", "echo $HOME\n", expand=True)]
    assert (run.start_line, run.end_line) == (2, 4)


def test_several_heredocs_in_one_instruction() -> None:
    text = "FROM a\nRUN python3 - <<PY 3<<DATA\nprint(1)\nPY\nx y\nDATA\n"
    docs = parse_dockerfile(text).nodes[1].heredocs
    assert [(d.name, d.content, d.fd) for d in docs] == [
        ("PY", "print(1)\n", 0),
        ("DATA", "x y\n", 3),
    ]


def test_chomp_heredoc_strips_leading_tabs_and_matches_tabbed_terminator() -> None:
    text = "FROM a\nCOPY <<-EOT /etc/x\n\tone\n\t\ttwo\n\tEOT\n"
    doc = parse_dockerfile(text).nodes[1].heredocs[0]
    assert doc.chomp is True
    assert doc.content == "\tone\n\t\ttwo\n"
    assert doc.body() == "one\ntwo\n"


@pytest.mark.parametrize(
    ("delimiter", "name", "expand"),
    [
        ("EOF", "EOF", True),
        ('"EOF"', "EOF", False),
        ("'EOF'", "EOF", False),
        ('E"O"F', "EOF", False),
        ("-EOF", "EOF", True),
    ],
)
def test_quoted_delimiter_disables_expansion(delimiter: str, name: str, expand: bool) -> None:
    text = "FROM a\nRUN cat <<%s\n$x\n%s%s\n" % (
        delimiter,
        "\t" if delimiter[0] == "-" else "",
        name,
    )
    doc = parse_dockerfile(text).nodes[1].heredocs[0]
    assert (doc.name, doc.expand, doc.content) == (name, expand, "$x\n")


def test_heredoc_in_json_form_is_not_a_heredoc() -> None:
    result = parse_dockerfile('FROM a\nRUN ["cat", "<<EOF"]\nEOF\n')
    assert result.nodes[1].heredocs == []
    assert render(result).endswith('(eof "")\n')


def test_heredoc_on_onbuild_trigger() -> None:
    text = "FROM a\nONBUILD RUN <<EOF\nmake\nEOF\n"
    node = parse_dockerfile(text).nodes[1]
    assert node.heredocs[0].content == "make\n"


def test_unterminated_heredoc_names_the_instruction_line() -> None:
    with pytest.raises(DockerfileError, match=r"^df:3: unterminated heredoc 'EOF'"):
        parse_dockerfile("FROM a\n\nRUN <<EOF\necho\n", "df")


def test_heredoc_on_other_instruction_is_plain_text() -> None:
    result = parse_dockerfile("FROM a\nENV A=<<EOF\nRUN x\n")
    assert render(result) == '(from "a")\n(env "A" "<<EOF" "=")\n(run "x")\n'


# --- splitting --------------------------------------------------------------------------------


def test_flags_have_quotes_removed_and_stop_at_double_dash() -> None:
    result = parse_dockerfile('FROM a\nCOPY --chown="a b" --link -- --x /y\n')
    node = result.nodes[1]
    assert node.flags == ["--chown=a b", "--link"]
    assert node.args == ["--x", "/y"]


def test_mount_flag_kept_whole() -> None:
    node = parse_dockerfile("FROM a\nRUN --mount=type=cache,target=/c make\n").nodes[1]
    assert node.flags == ["--mount=type=cache,target=/c"]
    assert node.args == ["make"]


def test_healthcheck_none_and_json() -> None:
    result = parse_dockerfile('FROM a\nHEALTHCHECK NONE\nHEALTHCHECK CMD ["x", "y"]\n')
    assert render(result).splitlines()[1:] == [
        '(healthcheck "NONE")',
        '(healthcheck "CMD" "x" "y")',
    ]
    assert result.nodes[2].json_form is True


def test_onbuild_renders_nested_trigger_with_flags() -> None:
    result = parse_dockerfile("FROM a\nONBUILD COPY --from=b x /y\n")
    assert render(result).endswith('(onbuild (copy ["--from=b"] "x" "/y"))\n')


def test_error_names_file_line_and_what_was_expected() -> None:
    with pytest.raises(DockerfileError) as info:
        parse_dockerfile("FROM a\n\nLABEL onlykey\n", "ctx/Dockerfile")
    assert str(info.value).startswith("ctx/Dockerfile:3: LABEL must have two arguments; expected")


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("plain", '"plain"'),
        ('a"b\\c', '"a\\"b\\\\c"'),
        ("\x00\x1b\x7f", '"\\x00\\x1b\\x7f"'),
        ("\t\n", '"\\t\\n"'),
        ("\u2665", '"\u2665"'),
        ("\u200b", '"\\u200b"'),
    ],
)
def test_go_quote(text: str, quoted: str) -> None:
    assert go_quote(text) == quoted


def test_invalid_utf8_names_the_line() -> None:
    assert decode_dockerfile("FROM a\nLABEL x=\u2665\n".encode()) == "FROM a\nLABEL x=\u2665\n"
    with pytest.raises(DockerfileError, match=r"^df:2: byte 0xff is not UTF-8"):
        decode_dockerfile(b"FROM a\nRUN \xff\n", "df")
