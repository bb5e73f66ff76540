# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Parse and render OpenWrt UCI configuration files, keeping what is not changed.

A :class:`Document` keeps every line of the original text: comments, blank lines,
quoting styles and the order of sections. Editing an option rewrites only that
option's line; adding one inserts a line after the section's last option. So
``render(parse(text)) == text`` and unrelated sections stay byte for byte.

Syntax handled, as libuci reads it: ``package``, ``config TYPE ['NAME']``,
``option NAME VALUE``, ``list NAME VALUE``; values single-quoted (no escapes),
double-quoted (backslash escapes) or bare (backslash escapes), pieces of which
may be concatenated (``'a'"b"c``); quoted values may span lines; ``#`` starts a
comment where a word could start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
KEYWORDS = ("package", "config", "option", "list")


class UciError(ValueError):
    """The text is not valid UCI syntax; the message names the line and the cause."""


@dataclass
class Line:
    """One statement, comment or blank line, with its exact source text."""

    raw: str
    keyword: str | None = None
    args: list[str] = field(default_factory=list)

    @property
    def name(self) -> str | None:
        return self.args[0] if self.keyword in ("option", "list") and self.args else None

    @property
    def value(self) -> str | None:
        return self.args[1] if self.keyword in ("option", "list") and len(self.args) > 1 else None


@dataclass
class Section:
    """A ``config`` section: its header line and the lines up to the next section."""

    type: str
    name: str | None
    header: Line
    body: list[Line] = field(default_factory=list)

    def get(self, option: str) -> str | None:
        """The value of ``option`` (the last one wins, as in libuci), or None."""
        found = None
        for line in self.body:
            if line.keyword == "option" and line.name == option:
                found = line.value
        return found

    def get_list(self, option: str) -> list[str]:
        return [ln.value or "" for ln in self.body if ln.keyword == "list" and ln.name == option]

    def options(self) -> dict[str, str]:
        return {ln.name or "": ln.value or "" for ln in self.body if ln.keyword == "option"}

    def _indent(self) -> str:
        for line in self.body:
            if line.keyword in ("option", "list"):
                return line.raw[: len(line.raw) - len(line.raw.lstrip(" \t"))]
        return "\t"

    def _last_statement(self) -> int:
        last = -1
        for index, line in enumerate(self.body):
            if line.keyword in ("option", "list"):
                last = index
        return last

    def set(self, option: str, value: str) -> bool:
        """Set ``option`` to ``value``; True when the text changed."""
        check_name(option, "option")
        positions = [
            i for i, ln in enumerate(self.body) if ln.keyword == "option" and ln.name == option
        ]
        if positions and len(positions) == 1 and self.body[positions[0]].value == value:
            return False
        new = Line(f"{self._indent()}option {option} {quote(value)}\n", "option", [option, value])
        if positions:
            if not self.body[positions[0]].raw.endswith("\n"):
                new.raw = new.raw[:-1]
            self.body[positions[0]] = new
            for index in reversed(positions[1:]):
                del self.body[index]
            return True
        after = self._last_statement()
        previous = self.body[after] if after >= 0 else self.header
        if not previous.raw.endswith("\n"):
            previous.raw += "\n"
        self.body.insert(after + 1, new)
        return True

    def delete(self, option: str) -> bool:
        """Remove every ``option``/``list`` line named ``option``; True when any was there."""
        keep = [ln for ln in self.body if ln.name != option]
        changed = len(keep) != len(self.body)
        self.body = keep
        return changed


@dataclass
class Document:
    """A whole UCI file: text before the first section, then the sections."""

    preamble: list[Line] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def of_type(self, type_: str) -> list[Section]:
        return [s for s in self.sections if s.type == type_]

    def find(self, name: str) -> Section | None:
        for section in self.sections:
            if section.name == name:
                return section
        return None

    def ref(self, section: Section) -> str:
        """How ``uci`` addresses the section: its name, or ``@type[index]``."""
        if section.name:
            return section.name
        return f"@{section.type}[{self.of_type(section.type).index(section)}]"

    def add(self, type_: str, name: str | None) -> Section:
        """Append a new section, separated from the previous one by a blank line."""
        check_name(type_, "section type")
        if name is not None:
            check_name(name, "section name")
            if self.find(name) is not None:
                raise UciError(f"section '{name}' already exists")
        last = self.sections[-1].body if self.sections else self.preamble
        if last and not last[-1].raw.endswith("\n"):
            last[-1] = Line(last[-1].raw + "\n", last[-1].keyword, last[-1].args)
        if last and last[-1].raw.strip():
            last.append(Line("\n"))
        header = f"config {type_}" + (f" {quote(name)}" if name else "") + "\n"
        section = Section(type_, name, Line(header, "config", [type_] + ([name] if name else [])))
        self.sections.append(section)
        return section


def check_name(name: str, what: str) -> None:
    if not NAME_RE.match(name):
        raise UciError(f"invalid UCI {what} '{name}': only letters, digits and _ are allowed")


def quote(value: str) -> str:
    """Single-quote a value the way ``uci export`` does."""
    return "'" + value.replace("'", "'\\''") + "'"


class _Scanner:
    """Splits UCI text into statements, remembering each statement's source text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _take(self) -> str:
        char = self.text[self.pos]
        self.pos += 1
        if char == "\n":
            self.line += 1
        return char

    def _skip_blanks(self) -> None:
        while self._peek() in (" ", "\t", "\r") and self._peek():
            self._take()

    def _comment(self) -> None:
        while self._peek() and self._peek() != "\n":
            self._take()

    def _quoted(self, quote_char: str, start_line: int) -> str:
        out: list[str] = []
        while True:
            char = self._peek()
            if not char:
                raise UciError(f"line {start_line}: unterminated {quote_char} quote")
            self._take()
            if char == quote_char:
                return "".join(out)
            if char == "\\" and quote_char == '"':
                escaped = self._peek()
                if not escaped:
                    raise UciError(f'line {start_line}: unterminated " quote')
                self._take()
                if escaped != "\n":
                    out.append(escaped)
                continue
            out.append(char)

    def _word(self) -> str:
        start_line = self.line
        out: list[str] = []
        while True:
            char = self._peek()
            if not char or char in " \t\r\n":
                return "".join(out)
            if char in ("'", '"'):
                self._take()
                out.append(self._quoted(char, start_line))
            elif char == "\\":
                self._take()
                escaped = self._peek()
                if escaped and escaped != "\n":
                    out.append(self._take())
                elif escaped == "\n":
                    self._take()
            else:
                out.append(self._take())

    def statement(self) -> tuple[str, list[str], int]:
        """Read one line's words (a statement may span lines inside quotes)."""
        start, line_no = self.pos, self.line
        words: list[str] = []
        while True:
            self._skip_blanks()
            char = self._peek()
            if not char:
                break
            if char == "\n":
                self._take()
                break
            if char == "#":
                self._comment()
                continue
            words.append(self._word())
        return self.text[start : self.pos], words, line_no

    def done(self) -> bool:
        return self.pos >= len(self.text)


def _statement_line(raw: str, words: list[str], line_no: int) -> Line:
    if not words:
        return Line(raw)
    keyword, args = words[0], words[1:]
    if keyword not in KEYWORDS:
        raise UciError(f"line {line_no}: unknown keyword '{keyword}' (expected {KEYWORDS})")
    wanted = {"package": (1, 1), "config": (1, 2), "option": (2, 2), "list": (2, 2)}[keyword]
    if not wanted[0] <= len(args) <= wanted[1]:
        raise UciError(f"line {line_no}: '{keyword}' takes {wanted[0]}-{wanted[1]} arguments")
    if keyword in ("option", "list") and not NAME_RE.match(args[0]):
        raise UciError(f"line {line_no}: invalid option name '{args[0]}'")
    return Line(raw, keyword, args)


def parse(text: str) -> Document:
    """Parse UCI text; raises :class:`UciError` naming the line on bad syntax."""
    doc = Document()
    scanner = _Scanner(text)
    while not scanner.done():
        raw, words, line_no = scanner.statement()
        line = _statement_line(raw, words, line_no)
        if line.keyword == "config":
            name = line.args[1] if len(line.args) > 1 else None
            doc.sections.append(Section(line.args[0], name, line))
        elif line.keyword in ("option", "list"):
            if not doc.sections:
                raise UciError(f"line {line_no}: '{line.keyword}' outside of a config section")
            doc.sections[-1].body.append(line)
        elif doc.sections:
            doc.sections[-1].body.append(line)
        else:
            doc.preamble.append(line)
    return doc


def render(doc: Document) -> str:
    """The document as text: unchanged lines exactly as they were read."""
    parts = [line.raw for line in doc.preamble]
    for section in doc.sections:
        parts.append(section.header.raw)
        parts.extend(line.raw for line in section.body)
    return "".join(parts)
