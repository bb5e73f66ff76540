# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Dockerfile word expansion: ``$v``, ``${v}``, ``${v:-w}`` and friends, quotes, escapes.

This is the small shell-like language the Dockerfile builder applies to the
arguments of ``ENV``, ``ARG``, ``LABEL``, ``COPY``, ``ADD``, ``WORKDIR``, ``USER``,
``EXPOSE``, ``VOLUME``, ``STOPSIGNAL`` and to ``FROM`` (with the global build args
only). It is not a shell: there is no command substitution, no arithmetic and no
globbing. ``RUN``, ``CMD`` and ``ENTRYPOINT`` are never expanded here; the shell in
the container does that.

``ShellLex(...).process_word(text, env)`` gives one string (spaces kept) and the
names it looked up; ``process_words`` also splits the result into words the way
Docker does (after substitution, taking quotes into account).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_SPECIAL_PARAMS = frozenset("@*#?-$!0")
_GO_SPACES = frozenset(" \t\n\v\f\r\x85\xa0")


class ExpansionError(ValueError):
    """A word could not be expanded (bad ``${...}`` syntax, unmatched quote, ``${v?}``)."""


def is_space(ch: str) -> bool:
    """Whitespace the way Go's ``unicode.IsSpace`` sees it."""
    return ch in _GO_SPACES or (ord(ch) > 0xFF and ch.isspace())


@dataclass
class ExpansionResult:
    """The expanded text, its words, and which variable names were looked up."""

    value: str
    words: list[str]
    matched: set[str] = field(default_factory=set)
    unmatched: set[str] = field(default_factory=set)


class _Words:
    """Collects the words of a result: unquoted whitespace splits, quoted text does not."""

    def __init__(self) -> None:
        self.word = ""
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if is_space(ch):
            if self.in_word and self.word:
                self.words.append(self.word)
                self.word = ""
                self.in_word = False
        else:
            self.add_raw(ch)

    def add_raw(self, text: str) -> None:
        self.word += text
        self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def done(self) -> list[str]:
        if self.word:
            self.words.append(self.word)
            self.word = ""
            self.in_word = False
        return self.words


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        if self.pos >= len(self.text):
            return ""
        ch = self.text[self.pos]
        self.pos += 1
        return ch


class ShellLex:
    """Docker's word processor with its switches (escape token, raw quotes, ...)."""

    def __init__(
        self,
        escape: str = "\\",
        raw_quotes: bool = False,
        raw_escapes: bool = False,
        skip_unset: bool = False,
        skip_quotes: bool = False,
    ) -> None:
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_unset = skip_unset
        self.skip_quotes = skip_quotes

    def process(self, text: str, env: Mapping[str, str]) -> ExpansionResult:
        """Expand ``text`` against ``env``; raises ExpansionError on bad syntax."""
        worker = _Worker(self, text, env)
        try:
            value, words = worker.stop_on("", self.raw_escapes)
        except ExpansionError as exc:
            raise ExpansionError("failed to process %r: %s" % (text, exc)) from None
        return ExpansionResult(value, words, worker.matched, worker.unmatched)

    def process_word(self, text: str, env: Mapping[str, str]) -> str:
        """One string: variables substituted, quotes and escapes removed, spaces kept."""
        return self.process(text, env).value

    def process_words(self, text: str, env: Mapping[str, str]) -> list[str]:
        """The expanded text split into words (unquoted whitespace separates words)."""
        return self.process(text, env).words


class _Worker:
    def __init__(self, lex: ShellLex, text: str, env: Mapping[str, str]) -> None:
        self.lex = lex
        self.sc = _Scanner(text)
        self.env = env
        self.raw_escapes = lex.raw_escapes
        self.matched: set[str] = set()
        self.unmatched: set[str] = set()

    def getenv(self, name: str) -> tuple[str, bool]:
        if name in self.env:
            self.matched.add(name)
            return self.env[name], True
        self.unmatched.add(name)
        return "", False

    def stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        saved = self.raw_escapes
        self.raw_escapes = raw_escapes
        try:
            return self._stop_on(stop)
        finally:
            self.raw_escapes = saved

    def _stop_on(self, stop: str) -> tuple[str, list[str]]:
        result: list[str] = []
        words = _Words()
        quotes = not self.lex.skip_quotes
        while self.sc.peek():
            ch = self.sc.peek()
            if stop and ch == stop:
                self.sc.next()
                return "".join(result), words.done()
            if ch == "$":
                text = self.dollar()
                result.append(text)
                words.add_string(text)
                continue
            if quotes and ch in "'\"":
                text = self.single_quote() if ch == "'" else self.double_quote()
                result.append(text)
                words.add_raw(text)
                continue
            ch = self.sc.next()
            if ch == self.lex.escape:
                if self.raw_escapes:
                    words.add_raw(ch)
                    result.append(ch)
                ch = self.sc.next()
                if not ch:
                    break
                words.add_raw(ch)
            else:
                words.add_char(ch)
            result.append(ch)
        if stop:
            raise ExpansionError("unexpected end of statement while looking for matching %s" % stop)
        return "".join(result), words.done()

    def single_quote(self) -> str:
        out: list[str] = []
        ch = self.sc.next()
        if self.lex.raw_quotes:
            out.append(ch)
        while True:
            ch = self.sc.next()
            if not ch:
                raise ExpansionError(
                    "unexpected end of statement while looking for matching single-quote"
                )
            if ch == "'":
                if self.lex.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def double_quote(self) -> str:
        out: list[str] = []
        ch = self.sc.next()
        if self.lex.raw_quotes:
            out.append(ch)
        while True:
            peek = self.sc.peek()
            if not peek:
                raise ExpansionError(
                    "unexpected end of statement while looking for matching double-quote"
                )
            if peek == '"':
                ch = self.sc.next()
                if self.lex.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if peek == "$":
                out.append(self.dollar())
                continue
            ch = self.sc.next()
            if ch == self.lex.escape:
                if self.raw_escapes:
                    out.append(ch)
                nxt = self.sc.peek()
                if not nxt:
                    continue
                if nxt in ('"', "$", self.lex.escape):
                    ch = self.sc.next()
            out.append(ch)

    def name(self) -> str:
        out: list[str] = []
        while self.sc.peek():
            ch = self.sc.peek()
            if not out and ch.isdigit():
                while self.sc.peek() and self.sc.peek().isdigit():
                    out.append(self.sc.next())
                return "".join(out)
            if not out and ch in _SPECIAL_PARAMS:
                return self.sc.next()
            if not (ch.isalnum() or ch == "_"):
                break
            out.append(self.sc.next())
        return "".join(out)

    def dollar(self) -> str:
        self.sc.next()
        if self.sc.peek() == "{":
            self.sc.next()
            return self.braced()
        name = self.name()
        if not name:
            return "$"
        value, found = self.getenv(name)
        if not found and self.lex.skip_unset:
            return "$" + name
        return value

    def braced(self) -> str:
        peek = self.sc.peek()
        if not peek:
            raise ExpansionError("syntax error: missing '}'")
        if peek in "{}:":
            raise ExpansionError("syntax error: bad substitution")
        name = self.name()
        ch = self.sc.next()
        if not ch:
            raise ExpansionError("syntax error: missing '}'")
        if ch == "/":
            return self.replace(name)
        if ch == "}":
            value, found = self.getenv(name)
            return "${%s}" % name if not found and self.lex.skip_unset else value
        null_is_unset = ch == ":"
        modifier = ch
        if null_is_unset:
            ch = self.sc.next()
            modifier += ch
        if not ch or ch not in "+-?#%" or (null_is_unset and ch in "#%"):
            raise ExpansionError("unsupported modifier (%s) in substitution" % modifier)
        return self.modifier(name, ch, modifier, null_is_unset)

    def modifier(self, name: str, op: str, modifier: str, null_is_unset: bool) -> str:
        word = self._word_until("}", op in "#%")
        value, found = self.getenv(name)
        if self.lex.skip_unset and not found:
            return "${%s%s%s}" % (name, modifier, word)
        empty = not found or (null_is_unset and value == "")
        if op == "-":
            return word if empty else value
        if op == "+":
            return "" if empty else word
        if op == "?":
            if empty:
                default = "is not allowed to be %s" % ("empty" if found else "unset")
                raise ExpansionError("%s: %s" % (name, word or default))
            return value
        return trim_pattern(value, word, op)

    def _word_until(self, stop: str, raw_escapes: bool) -> str:
        try:
            word = self.stop_on(stop, raw_escapes)[0]
        except ExpansionError:
            if not self.sc.peek():
                raise ExpansionError(
                    "syntax error: missing '%s'" % stop + (" in ${}" if stop == "/" else "")
                ) from None
            raise
        return word

    def replace(self, name: str) -> str:
        replace_all = self.sc.peek() == "/"
        if replace_all:
            self.sc.next()
        pattern = self._word_until("/", True)
        replacement = self._word_until("}", True)
        value, found = self.getenv(name)
        if self.lex.skip_unset and not found:
            return "${%s/%s/%s}" % (name, pattern, replacement)
        regex = shell_pattern_regex(pattern)
        if replace_all:
            return regex.sub(lambda _m: replacement, value)
        return regex.sub(lambda _m: replacement, value, count=1)


def trim_pattern(value: str, word: str, op: str) -> str:
    """``${v#p}``, ``${v##p}`` (prefix) and ``${v%p}``, ``${v%%p}`` (suffix) removal."""
    greedy = word.startswith(op)
    regex = shell_pattern_regex(word[1:] if greedy else word)
    if op == "#":
        order = range(len(value), -1, -1) if greedy else range(len(value) + 1)
        for i in order:
            if regex.fullmatch(value[:i]):
                return value[i:]
        return value
    order = range(len(value) + 1) if greedy else range(len(value), -1, -1)
    for i in order:
        if regex.fullmatch(value[i:]):
            return value[:i]
    return value


def shell_pattern_regex(pattern: str) -> re.Pattern[str]:
    """A shell glob (``*``, ``?``, ``[...]``, backslash escapes) as a regular expression."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "^", "]") else i + 1)
            if end < 0:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1 : end]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:].replace("\\", "\\\\")
                else:
                    body = body.replace("\\", "\\\\").replace("^", "\\^")
                out.append("[" + body + "]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    try:
        return re.compile("".join(out), re.DOTALL)
    except re.error as exc:
        raise ExpansionError("invalid pattern (%s) in substitution: %s" % (pattern, exc)) from None
