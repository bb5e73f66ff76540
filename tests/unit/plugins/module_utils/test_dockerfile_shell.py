"""Dockerfile word expansion: Docker's substitution rules as tables."""

from __future__ import annotations

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_shell import (
    ExpansionError,
    ShellLex,
)

ENV = {"v": "value", "e": "", "sp": "a b", "path": "/usr/local/lib.tar.gz", "n1": "1"}


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("$v", "value"),
        ("${v}", "value"),
        ("${v}x", "valuex"),
        ("$vx", ""),
        ("$unset", ""),
        ("pre$v-post", "prevalue-post"),
        # defaults and alternatives, with and without the colon
        ("${e:-def}", "def"),
        ("${e-def}", ""),
        ("${unset-def}", "def"),
        ("${unset:-def}", "def"),
        ("${v:-def}", "value"),
        ("${e:+alt}", ""),
        ("${e+alt}", "alt"),
        ("${v:+alt}", "alt"),
        ("${unset+alt}", ""),
        ("${unset:-$v}", "value"),
        ("${unset:-'a b'}", "a b"),
        ("${unset:-${v}}", "value"),
        # escapes and quotes
        ("\\$v", "$v"),
        ("\\${v}", "${v}"),
        ("'$v'", "$v"),
        ('"$v"', "value"),
        ('"\\$v"', "$v"),
        ('"a\\"b"', 'a"b'),
        ('"a\\b"', "a\\b"),
        ("a\\ b", "a b"),
        ("'a\\b'", "a\\b"),
        ("$", "$"),
        ("$ x", "$ x"),
        ("a\\", "a"),
        # special parameters and digits are names of their own
        ("$1x", "x"),
        ("$n1", "1"),
        # pattern removal and replacement
        ("${path%.*}", "/usr/local/lib.tar"),
        ("${path%%.*}", "/usr/local/lib"),
        ("${path#*/}", "usr/local/lib.tar.gz"),
        ("${path##*/}", "lib.tar.gz"),
        ("${v/a/A}", "vAlue"),
        ("${sp// /_}", "a_b"),
    ],
)
def test_process_word(word: str, expected: str) -> None:
    assert ShellLex().process_word(word, ENV) == expected


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("$sp", ["a", "b"]),
        ('"$sp"', ["a b"]),
        ("x$sp", ["xa", "b"]),
        ("a\\ b c", ["a b", "c"]),
        ("$e", []),
        ('""', []),
        ("one  two", ["one", "two"]),
    ],
)
def test_process_words_splits_after_substitution(word: str, expected: list[str]) -> None:
    assert ShellLex().process_words(word, ENV) == expected


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("${v", "missing '}'"),
        ("${", "missing '}'"),
        ("${}", "bad substitution"),
        ("${:x}", "bad substitution"),
        ("${v x}", "unsupported modifier"),
        ("${v:#x}", "unsupported modifier"),
        ("'open", "matching single-quote"),
        ('"open', "matching double-quote"),
        ("${unset?must be set}", "unset: must be set"),
        ("${e:?}", "e: is not allowed to be empty"),
    ],
)
def test_bad_words_raise(word: str, message: str) -> None:
    with pytest.raises(ExpansionError, match=message):
        ShellLex().process_word(word, ENV)


def test_backtick_escape_token() -> None:
    lex = ShellLex(escape="`")
    assert lex.process_word("C:\\dir`$v", ENV) == "C:\\dir$v"


def test_lookups_are_recorded() -> None:
    result = ShellLex().process("$v ${unset:-x}", ENV)
    assert result.matched == {"v"}
    assert result.unmatched == {"unset"}


def test_skip_unset_keeps_references() -> None:
    lex = ShellLex(skip_unset=True)
    assert lex.process_word("$v $unset ${unset:-d}", ENV) == "value $unset ${unset:-d}"


def test_raw_quotes_keep_quotes() -> None:
    lex = ShellLex(raw_quotes=True)
    assert lex.process_word("'a' \"b\"", ENV) == "'a' \"b\""
