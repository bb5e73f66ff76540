# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Dockerfile syntax: text to a list of instruction nodes, before any expansion.

``parse_dockerfile(text, filename)`` reads parser directives (``syntax``,
``escape``, ``check``) at the top, drops comments, joins continued lines (with the
escape character, ``\\`` or a backtick), reads heredoc bodies (``RUN <<EOF``,
``COPY <<EOF /path``, ``<<-``, quoted delimiters) and splits each instruction into
its keyword, its ``--flags`` and its arguments the way the reference parser does.
``render_node`` prints a node in the reference parser's test dump format.

Nothing is substituted here: ``ENV a="b c"`` keeps its quotes. The typed
instruction layer (``dockerfile_instructions``) gives the arguments meaning.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_shell import (
    ExpansionError,
    ShellLex,
    is_space,
)

DIRECTIVES = ("syntax", "escape", "check")
_DIRECTIVE_RE = re.compile(r"^#[ \t]*([a-zA-Z][a-zA-Z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*$")
_WHITESPACE_RE = re.compile(r"[\t\v\f\r ]+")
_HEREDOC_RE = re.compile(r"^(\d*)<<(-?)([^<]*)$")
_HEREDOC_INSTRUCTIONS = frozenset({"add", "copy", "run"})
_BOM = "\ufeff"


class DockerfileError(ValueError):
    """A Dockerfile is wrong; names the file and the line (1-based) and what was expected."""

    def __init__(self, message: str, filename: str = "Dockerfile", line: int = 0) -> None:
        self.message = message
        self.filename = filename
        self.line = line
        where = "%s:%d" % (filename, line) if line else filename
        super().__init__("%s: %s" % (where, message))


@dataclass(frozen=True)
class Heredoc:
    """A here-document attached to an instruction.

    ``content`` is the body as written (each line ending in ``\\n``); ``chomp`` is
    ``<<-`` (leading tabs to strip); ``expand`` is false when any part of the
    delimiter was quoted, which turns off variable expansion of the body.
    """

    name: str
    content: str = ""
    expand: bool = True
    chomp: bool = False
    fd: int = 0

    def body(self) -> str:
        """The content with leading tabs removed from each line for ``<<-``."""
        return chomp_heredoc(self.content) if self.chomp else self.content


@dataclass
class Node:
    """One instruction as written: keyword, flags, arguments, heredocs and lines."""

    keyword: str
    flags: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    child: Node | None = None
    heredocs: list[Heredoc] = field(default_factory=list)
    json_form: bool = False
    original: str = ""
    start_line: int = 0
    end_line: int = 0
    comments: list[str] = field(default_factory=list)

    @property
    def instruction(self) -> str:
        """The keyword in lower case (``run``, ``copy``, ...)."""
        return self.keyword.lower()


@dataclass
class ParseResult:
    """A parsed Dockerfile: its nodes, its parser directives and its escape character."""

    filename: str
    nodes: list[Node]
    directives: dict[str, str]
    escape: str
    warnings: list[str] = field(default_factory=list)


class _Directives:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.escape = "\\"
        self.values: dict[str, str] = {}
        self.done = False
        self.line = 0
        self.continuation = _continuation_re("\\")

    def feed(self, text: str, lineno: int) -> None:
        """Look at a physical line; the first one that is not a directive ends the block."""
        self.line += 1
        if self.done:
            return
        if self.line == 1 and text.startswith("#!"):
            return
        match = _DIRECTIVE_RE.match(text)
        name = match.group(1).lower() if match else ""
        if not match or name not in DIRECTIVES:
            self.done = True
            return
        if name in self.values:
            raise DockerfileError(
                "only one %s parser directive can be used; remove the repeated one" % name,
                self.filename,
                lineno,
            )
        value = match.group(2)
        self.values[name] = value
        if name == "escape":
            if value not in ("`", "\\"):
                raise DockerfileError(
                    "invalid escape character %r; expected ` or \\" % value, self.filename, lineno
                )
            self.escape = value
            self.continuation = _continuation_re(value)


def _continuation_re(escape: str) -> re.Pattern[str]:
    # An odd run of escape characters at the end continues the line; an even run
    # is escaped escapes (``C:\\``) and ends it.
    esc = re.escape(escape)
    return re.compile("(?<!%s)(?:%s%s)*(%s)[ \t]*$" % (esc, esc, esc, esc))


def _trim_newline(text: str) -> str:
    return text.rstrip("\r\n")


def _lstrip(text: str) -> str:
    i = 0
    while i < len(text) and is_space(text[i]):
        i += 1
    return text[i:]


def _strip(text: str) -> str:
    text = _lstrip(text)
    j = len(text)
    while j > 0 and is_space(text[j - 1]):
        j -= 1
    return text[:j]


def _is_comment(text: str) -> bool:
    return _lstrip(_trim_newline(text)).startswith("#")


def chomp_heredoc(content: str) -> str:
    """Remove the leading tabs of every line (the ``<<-`` form)."""
    return "".join(line.lstrip("\t") for line in content.splitlines(keepends=True))


class _Lines:
    """Physical lines of the file with a cursor (1-based line numbers)."""

    def __init__(self, text: str) -> None:
        if text.startswith(_BOM):
            text = text[1:]
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        self.lines = [line[:-1] if line.endswith("\r") else line for line in lines]
        self.pos = 0

    def next(self) -> str | None:
        if self.pos >= len(self.lines):
            return None
        self.pos += 1
        return self.lines[self.pos - 1]


def decode_dockerfile(data: bytes, filename: str = "Dockerfile") -> str:
    """Dockerfile bytes as text; invalid UTF-8 is a DockerfileError naming the line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DockerfileError(
            "byte 0x%02x is not UTF-8; expected a UTF-8 text file" % data[exc.start],
            filename,
            line,
        ) from None


def parse_dockerfile(text: str, filename: str = "Dockerfile") -> ParseResult:
    """Parse Dockerfile text into nodes; raises DockerfileError naming the line."""
    directives = _Directives(filename)
    lines = _Lines(text)
    nodes: list[Node] = []
    warnings: list[str] = []
    comments: list[str] = []

    while True:
        raw = lines.next()
        if raw is None:
            break
        start = lines.pos
        if _is_comment(raw):
            comment = _strip(_lstrip(raw)[1:])
            comments = [*comments, comment] if comment else []
        first = _process_line(directives, raw, True, start)
        first, ended = _trim_continuation(first, directives)
        if ended and not first:
            continue
        logical, empty_continuation = _read_continuation(lines, directives, first, ended)
        if empty_continuation:
            warnings.append(
                "%s:%d: empty continuation line; remove the blank lines inside the instruction"
                % (filename, start)
            )
        node = _node_or_error(logical, directives.escape, filename, start, comments)
        if _can_contain_heredoc(node) and "<<" in logical:
            node.heredocs = _read_heredocs(lines, logical, filename, start)
        node.start_line = start
        node.end_line = lines.pos
        nodes.append(node)
        comments = []

    if not nodes:
        raise DockerfileError(
            "file with no instructions; expected at least a FROM instruction",
            filename,
            max(lines.pos, 1),
        )
    return ParseResult(filename, nodes, dict(directives.values), directives.escape, warnings)


def _process_line(directives: _Directives, raw: str, strip_left: bool, lineno: int) -> str:
    text = _trim_newline(raw)
    if strip_left:
        text = _lstrip(text)
    directives.feed(text, lineno)
    return "" if _is_comment(text) else text


def _trim_continuation(text: str, directives: _Directives) -> tuple[str, bool]:
    match = directives.continuation.search(text)
    if match:
        return text[: match.start(1)], False
    return text, True


def _read_continuation(
    lines: _Lines, directives: _Directives, first: str, ended: bool
) -> tuple[str, bool]:
    parts = [first]
    empty_continuation = False
    while not ended:
        raw = lines.next()
        if raw is None:
            break
        text = _process_line(directives, raw, False, lines.pos)
        if _is_comment(raw):
            continue
        if not _lstrip(text):
            empty_continuation = True
            continue
        text, ended = _trim_continuation(text, directives)
        parts.append(text)
    return "".join(parts), empty_continuation


def _node_or_error(line: str, escape: str, filename: str, start: int, comments: list[str]) -> Node:
    try:
        node = node_from_line(line, escape)
    except ValueError as exc:
        raise DockerfileError(str(exc), filename, start) from None
    node.comments = comments
    return node


def _read_heredocs(lines: _Lines, logical: str, filename: str, start: int) -> list[Heredoc]:
    try:
        found = heredocs_from_line(logical)
    except ValueError as exc:
        raise DockerfileError(str(exc), filename, start) from None
    docs: list[Heredoc] = []
    for doc in found:
        body: list[str] = []
        while True:
            raw = lines.next()
            if raw is None:
                raise DockerfileError(
                    "unterminated heredoc %r; expected a line with just %s before the end "
                    "of the file" % (doc.name, doc.name),
                    filename,
                    start,
                )
            candidate = _trim_newline(raw)
            if doc.chomp:
                candidate = candidate.lstrip("\t")
            if candidate == doc.name:
                break
            body.append(raw + "\n")
        docs.append(Heredoc(doc.name, "".join(body), doc.expand, doc.chomp, doc.fd))
    return docs


def _can_contain_heredoc(node: Node) -> bool:
    if node.instruction == "onbuild" and node.child is not None:
        node = node.child
    return node.instruction in _HEREDOC_INSTRUCTIONS and not node.json_form


def heredocs_from_line(line: str) -> list[Heredoc]:
    """The heredoc delimiters named in one instruction line, in order."""
    lex = ShellLex("\\", raw_quotes=True, raw_escapes=True)
    try:
        words = lex.process_words(line, {})
    except ExpansionError:
        words = []
    docs = []
    for word in words:
        doc = parse_heredoc(word)
        if doc is not None:
            docs.append(doc)
    return docs


def parse_heredoc(word: str) -> Heredoc | None:
    """``<<EOF``, ``<<-EOF``, ``<<"EOF"``, ``3<<EOF`` as a Heredoc (no body); else None."""
    match = _HEREDOC_RE.match(word)
    if not match or not match.group(3):
        return None
    rest = match.group(3)
    plain = ShellLex("\\", skip_unset=True)
    raw = ShellLex("\\", skip_unset=True, raw_quotes=True)
    try:
        words = plain.process_words(rest, {})
        raw_words = raw.process_words(rest, {})
    except ExpansionError as exc:
        raise ValueError("bad heredoc delimiter %r: %s" % (rest, exc)) from None
    if len(words) != 1 or len(raw_words) != 1:
        return None
    quotes = words[0].count("'") + words[0].count('"')
    raw_quotes = raw_words[0].count("'") + raw_words[0].count('"')
    fd = int(match.group(1)) if match.group(1) else 0
    return Heredoc(words[0], expand=quotes == raw_quotes, chomp=match.group(2) == "-", fd=fd)


def node_from_line(line: str, escape: str = "\\") -> Node:
    """Split one logical line into keyword, flags and arguments (raises ValueError)."""
    keyword, flags, rest = split_command(line)
    node = Node(keyword, flags=flags, original=line)
    parser = _ARG_PARSERS.get(keyword.lower(), _parse_unknown)
    parser(node, rest, escape)
    return node


def split_command(line: str) -> tuple[str, list[str], str]:
    """Keyword, flags (quotes removed, ``--`` dropped) and the trimmed rest."""
    parts = _WHITESPACE_RE.split(_strip(line), maxsplit=1)
    if len(parts) < 2:
        return parts[0], [], ""
    rest, flags = extract_flags(parts[1])
    return parts[0], flags, _strip(rest)


def extract_flags(line: str) -> tuple[str, list[str]]:
    """Leading ``--name[=value]`` words of an instruction, and what follows them."""
    words: list[str] = []
    pos = 0
    while True:
        while pos < len(line) and is_space(line[pos]):
            pos += 1
        if pos >= len(line):
            return "", words
        if not line.startswith("--", pos):
            return line[pos:], words
        word, pos = _flag_word(line, pos)
        if word == "--":
            return line[pos:], words
        if word is not None:
            words.append(word)


def _flag_word(line: str, pos: int) -> tuple[str | None, int]:
    out: list[str] = []
    quote = ""
    blank_ok = False
    while pos < len(line):
        ch = line[pos]
        if not quote and is_space(ch):
            break
        if not quote and ch in "'\"":
            quote, blank_ok = ch, True
        elif quote and ch == quote:
            quote = ""
        elif ch == "\\":
            if pos + 1 < len(line):
                pos += 1
                out.append(line[pos])
        else:
            out.append(ch)
        pos += 1
    word = "".join(out)
    if word or blank_ok:
        return word, pos
    return None, pos


def parse_words(rest: str, escape: str) -> list[str]:
    """Words separated by unquoted whitespace; quotes and escapes stay in the words."""
    words: list[str] = []
    word: list[str] = []
    in_word = False
    blank_ok = False
    quote = ""
    pos = 0
    while pos < len(rest):
        ch = rest[pos]
        if not quote and is_space(ch):
            if in_word and (word or blank_ok):
                words.append("".join(word))
            word, in_word, blank_ok = [], False, False
            pos += 1
            continue
        in_word = True
        if not quote and ch in "'\"":
            quote, blank_ok = ch, True
        elif quote and ch == quote:
            quote = ""
        elif ch == escape and quote != "'":
            if pos + 1 == len(rest):
                pos += 1
                continue
            word.append(ch)
            pos += 1
            ch = rest[pos]
        word.append(ch)
        pos += 1
    if in_word and (word or blank_ok):
        words.append("".join(word))
    return words


def _split_whitespace(rest: str) -> list[str]:
    return _WHITESPACE_RE.split(rest) if rest else []


def _json_array(rest: str) -> list[str] | None:
    """The elements of a JSON array of strings; None when ``rest`` is not a JSON array."""
    rest = _lstrip(rest)
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest, parse_constant=_reject_constant)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(item, str) for item in value):
        raise ValueError(
            "the JSON array form needs every element to be a string; "
            'expected e.g. ["executable", "arg"]'
        )
    return value


def _reject_constant(name: str) -> object:
    raise ValueError("not JSON: %s" % name)


def _parse_unknown(node: Node, rest: str, escape: str) -> None:
    node.args = [""]


def _parse_maybe_json(node: Node, rest: str, escape: str) -> None:
    if not rest:
        return
    items = _json_array(rest)
    if items is None:
        node.args = [rest]
    else:
        node.args, node.json_form = items, True


def _parse_maybe_json_list(node: Node, rest: str, escape: str) -> None:
    items = _json_array(rest)
    if items is None:
        node.args = _split_whitespace(rest)
    else:
        node.args, node.json_form = items, True


def _parse_whitespace(node: Node, rest: str, escape: str) -> None:
    node.args = _split_whitespace(rest)


def _parse_string(node: Node, rest: str, escape: str) -> None:
    node.args = [rest] if rest else []


def _parse_name_value(node: Node, rest: str, escape: str) -> None:
    words = parse_words(rest, escape)
    if not words:
        return
    if "=" not in words[0]:
        parts = _WHITESPACE_RE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise ValueError(
                "%s must have two arguments; expected %s name value or %s name=value"
                % ((node.keyword.upper(),) * 3)
            )
        node.args = [parts[0], parts[1], ""]
        return
    args: list[str] = []
    for word in words:
        if "=" not in word:
            raise ValueError(
                "syntax error - can't find = in %r; expected the form name=value" % word
            )
        key, value = word.split("=", 1)
        args += [key, value, "="]
    node.args = args


def _parse_arg(node: Node, rest: str, escape: str) -> None:
    node.args = parse_words(rest, escape)


def _parse_onbuild(node: Node, rest: str, escape: str) -> None:
    if rest:
        node.child = node_from_line(rest, escape)


def _parse_healthcheck(node: Node, rest: str, escape: str) -> None:
    sep = 0
    while sep < len(rest) and not is_space(rest[sep]):
        sep += 1
    if sep == 0:
        return
    nxt = sep
    while nxt < len(rest) and is_space(rest[nxt]):
        nxt += 1
    node.args = [rest[:sep]]
    sub = Node(node.keyword)
    _parse_maybe_json(sub, rest[nxt:], escape)
    node.args += sub.args
    node.json_form = sub.json_form


_ARG_PARSERS = {
    "add": _parse_maybe_json_list,
    "arg": _parse_arg,
    "cmd": _parse_maybe_json,
    "copy": _parse_maybe_json_list,
    "entrypoint": _parse_maybe_json,
    "env": _parse_name_value,
    "expose": _parse_whitespace,
    "from": _parse_whitespace,
    "healthcheck": _parse_healthcheck,
    "label": _parse_name_value,
    "maintainer": _parse_string,
    "onbuild": _parse_onbuild,
    "run": _parse_maybe_json,
    "shell": _parse_maybe_json,
    "stopsignal": _parse_string,
    "user": _parse_string,
    "volume": _parse_maybe_json_list,
    "workdir": _parse_string,
}

KNOWN_INSTRUCTIONS = frozenset(_ARG_PARSERS)

_GO_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def go_quote(text: str) -> str:
    """``text`` quoted as Go's ``strconv.Quote`` writes it (the dump format's strings)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:
            out.append("\\x%02x" % (code - 0xDC00))
        elif ch == " " or (ch.isprintable() and not ch.isspace()):
            out.append(ch)
        elif code < 0x20 or code == 0x7F:
            out.append("\\x%02x" % code)
        elif code < 0x10000:
            out.append("\\u%04x" % code)
        else:
            out.append("\\U%08x" % code)
    out.append('"')
    return "".join(out)


def render_node(node: Node) -> str:
    """One node in the reference parser's dump format: ``(copy ["--from=a"] "x" "/y")``."""
    parts = [node.instruction]
    if node.flags:
        parts.append("[" + " ".join(go_quote(flag) for flag in node.flags) + "]")
    if node.child is not None:
        parts.append(render_node(node.child))
    parts.extend(go_quote(arg) for arg in node.args)
    return "(" + " ".join(parts) + ")"


def render(result: ParseResult) -> str:
    """The whole file in the dump format, one line per instruction."""
    return "".join(render_node(node) + "\n" for node in result.nodes)
