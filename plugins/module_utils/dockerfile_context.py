# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The build context: ``.dockerignore`` matching and the files a COPY/ADD uses.

``read_ignore_patterns(text)`` reads a ``.dockerignore`` the way Docker does
(comments, ``!`` exceptions, paths cleaned, leading ``/`` dropped) and
``IgnoreMatcher`` applies it with Docker's rules: ``*`` and ``?`` stop at ``/``,
``**`` crosses directories, a pattern that matches a parent directory excludes
everything below it, and the last matching pattern wins.
``find_ignore_file(context, dockerfile)`` prefers ``<Dockerfile>.dockerignore``
beside the Dockerfile over ``<context>/.dockerignore``.

``context_sources(context, sources, matcher, excludes)`` resolves COPY/ADD
sources (with ``*``, ``?``, ``[...]`` wildcards per path component) inside the
context, never leaving it (``..`` is clamped and symlinks are resolved as if the
context were the root), and lists every file they cover with its metadata and
content digest. ``sources_digest`` hashes such a list for the step's cache key:
paths, types, permission bits, owners, link targets and contents; not mtimes,
so a ``touch`` alone does not invalidate the cache.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_instructions import (
    CopyInstr,
)
from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_plan import (
    go_clean,
    is_remote_source,
)

_CHUNK = 1 << 20
_MAX_LINKS = 40
_REGEX_SPECIALS = frozenset(".+()|{}^$")


class ContextError(ValueError):
    """A COPY/ADD source is missing, excluded, outside the context or unreadable."""


# --- .dockerignore --------------------------------------------------------------------------


def read_ignore_patterns(text: str) -> list[str]:
    """The patterns of a ``.dockerignore`` file, normalised the way Docker reads them."""
    out: list[str] = []
    for number, raw in enumerate(text.split("\n")):
        line = raw.rstrip("\r")
        if number == 0 and line.startswith("\ufeff"):
            line = line[1:]
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = go_clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        out.append("!" + pattern if invert else pattern)
    return out


@dataclass
class IgnorePattern:
    """One compiled pattern; ``exclusion`` for ``!pattern`` (re-includes)."""

    text: str
    exclusion: bool
    kind: str = "exact"
    regex: re.Pattern[str] | None = None

    def match(self, path: str) -> bool:
        """Whether ``path`` (slash-separated, relative to the context) matches."""
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            if path.endswith(suffix):
                return True
            return suffix.startswith("/") and path == suffix[1:]
        return bool(self.regex is not None and self.regex.match(path))


def compile_ignore_pattern(text: str) -> IgnorePattern:
    """A ``.dockerignore`` pattern compiled with Docker's rules (raises ValueError)."""
    text = text.strip()
    exclusion = text.startswith("!")
    if exclusion:
        if len(text) == 1:
            raise ValueError('illegal exclusion pattern: "!"; expected !pattern')
        text = text[1:]
    text = go_clean(text)
    pattern = IgnorePattern(text, exclusion)
    regex = ["^"]
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "*" and text[i + 1 : i + 2] == "*":
            at_start = i == 0
            i += 2
            if text[i : i + 1] == "/":
                i += 1
            if i >= len(text):
                if pattern.kind == "exact":
                    pattern.kind = "prefix"
                else:
                    regex.append(".*")
                    pattern.kind = "regexp"
            else:
                regex.append("(.*/)?")
                pattern.kind = "regexp"
            if at_start:
                pattern.kind = "suffix"
            continue
        i = _compile_char(text, i, regex, pattern)
    if pattern.kind == "regexp":
        try:
            pattern.regex = re.compile("".join(regex) + "$", re.DOTALL)
        except re.error as exc:
            raise ValueError("bad pattern %r: %s" % (text, exc)) from None
    return pattern


def _compile_char(text: str, i: int, regex: list[str], pattern: IgnorePattern) -> int:
    ch = text[i]
    if ch == "*":
        regex.append("[^/]*")
        pattern.kind = "regexp"
    elif ch == "?":
        regex.append("[^/]")
        pattern.kind = "regexp"
    elif ch in _REGEX_SPECIALS and not (ch == "^" and regex[-1] == "["):
        regex.append("\\" + ch)
    elif ch == "\\":
        if i + 1 < len(text):
            i += 1
            regex.append(re.escape(text[i]))
        else:
            regex.append("\\\\")
    elif ch in "[]":
        regex.append(ch)
        pattern.kind = "regexp"
    else:
        regex.append(ch)
    return i + 1


class IgnoreMatcher:
    """A ``.dockerignore`` pattern list: ``excluded(path)`` with Docker's rules."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = [compile_ignore_pattern(p) for p in patterns if p.strip()]

    @property
    def has_exclusions(self) -> bool:
        """Whether there is any ``!pattern``."""
        return any(p.exclusion for p in self.patterns)

    def may_reinclude_below(self, directory: str) -> bool:
        """Whether an excluded directory must still be walked for ``!`` patterns.

        As Docker does, only a ``!pattern`` that spells out the directory as its
        prefix (``!docs/keep.md`` for ``docs``) reaches inside an excluded
        directory; ``!**/keep.md`` does not.
        """
        prefix = go_clean(directory) + "/"
        return any(p.exclusion and (p.text + "/").startswith(prefix) for p in self.patterns)

    def excluded(self, path: str) -> bool:
        """Whether the context path ``path`` (or one of its parents) is ignored."""
        path = go_clean(path)
        parent = path.rsplit("/", 1)[0] if "/" in path else "."
        parents = parent.split("/") if parent != "." else []
        matched = False
        for pattern in self.patterns:
            if pattern.exclusion != matched:
                continue
            hit = pattern.match(path)
            if not hit:
                hit = any(pattern.match("/".join(parents[: i + 1])) for i in range(len(parents)))
            if hit:
                matched = not pattern.exclusion
        return matched


def find_ignore_file(context_dir: str, dockerfile: str | None = None) -> str | None:
    """``<Dockerfile>.dockerignore`` beside the Dockerfile, else ``<context>/.dockerignore``."""
    if dockerfile:
        beside = Path(dockerfile + ".dockerignore")
        if beside.is_file():
            return str(beside)
    candidate = Path(context_dir) / ".dockerignore"
    return str(candidate) if candidate.is_file() else None


def load_ignore_matcher(context_dir: str, dockerfile: str | None = None) -> IgnoreMatcher:
    """The matcher of the build's ignore file (an empty matcher when there is none)."""
    path = find_ignore_file(context_dir, dockerfile)
    if path is None:
        return IgnoreMatcher([])
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        text = handle.read()
    try:
        return IgnoreMatcher(read_ignore_patterns(text))
    except ValueError as exc:
        raise ContextError("%s: %s" % (path, exc)) from None


# --- COPY/ADD sources -------------------------------------------------------------------------


@dataclass(frozen=True)
class ContextEntry:
    """One path of the context a source covers (``path`` relative, ``/``-separated)."""

    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    size: int = 0
    link_target: str = ""
    digest: str = ""


@dataclass
class SourceMatch:
    """What one source covers: the matched root (``.`` = context) and every entry under it."""

    source: str
    root: str
    entries: list[ContextEntry] = field(default_factory=list)


def go_match(pattern: str, name: str) -> bool:
    """Go's ``filepath.Match`` for one path component (raises ValueError if malformed)."""
    regex: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            regex.append("[^/]*")
        elif ch == "?":
            regex.append("[^/]")
        elif ch == "\\":
            i += 1
            if i >= len(pattern):
                raise ValueError("syntax error in pattern %r" % pattern)
            regex.append(re.escape(pattern[i]))
        elif ch == "[":
            end, body = _char_class(pattern, i)
            regex.append(body)
            i = end
        else:
            regex.append(re.escape(ch))
        i += 1
    return re.fullmatch("".join(regex), name, re.DOTALL) is not None


def _char_class(pattern: str, start: int) -> tuple[int, str]:
    i = start + 1
    negate = pattern[i : i + 1] == "^"
    if negate:
        i += 1
    parts: list[str] = []
    while i < len(pattern) and (pattern[i] != "]" or not parts):
        ch = pattern[i]
        if ch == "\\":
            i += 1
            if i >= len(pattern):
                break
            ch = pattern[i]
        if ch in "-]" and not parts:
            raise ValueError("syntax error in pattern %r" % pattern)
        parts.append("-" if ch == "-" and pattern[i - 1] != "\\" else re.escape(ch))
        i += 1
    if i >= len(pattern) or not parts:
        raise ValueError("syntax error in pattern %r" % pattern)
    return i, "[" + ("^/" if negate else "") + "".join(parts) + "]"


def _has_wildcard(component: str) -> bool:
    return any(ch in component for ch in "*?[\\")


class _Context:
    def __init__(self, root: str, matcher: IgnoreMatcher) -> None:
        self.root = Path(root).resolve()
        self.matcher = matcher

    def abs(self, rel: str) -> Path:
        return self.root if rel in ("", ".") else self.root / rel

    def resolve(self, rel: str, follow_last: bool = True) -> str:
        """``rel`` with symlinks resolved as if the context were ``/`` (never leaves it)."""
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        done: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if done:
                    done.pop()
                continue
            path = self.root.joinpath(*done, part)
            if path.is_symlink() and (parts or follow_last):
                hops += 1
                if hops > _MAX_LINKS:
                    raise ContextError("too many levels of symbolic links in %r" % rel)
                target = str(path.readlink())
                if target.startswith("/"):
                    done = []
                parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                continue
            done.append(part)
        return "/".join(done) or "."

    def visible(self, rel: str) -> bool:
        return rel == "." or not self.matcher.excluded(rel)

    def expand(self, source: str) -> list[str]:
        cleaned = go_clean("/" + source).lstrip("/") or "."
        if cleaned == ".":
            return ["."]
        found = ["."]
        for component in cleaned.split("/"):
            found = self._step(found, component)
        return [path for path in found if self.visible_root(path)]

    def visible_root(self, rel: str) -> bool:
        """A matched source is visible unless ignored, or when ``!`` rules keep files below it."""
        if self.visible(rel):
            return True
        if not self.matcher.may_reinclude_below(rel):
            return False
        real = self.resolve(rel)
        return self.abs(real).is_dir() and bool(self.walk(rel, real))

    def _step(self, parents: list[str], component: str) -> list[str]:
        out: list[str] = []
        for parent in parents:
            real = self.resolve(parent)
            base = "" if parent == "." else parent + "/"
            if not _has_wildcard(component):
                if _lexists(self.abs(real) / component):
                    out.append(base + component)
                continue
            try:
                names = sorted(child.name for child in self.abs(real).iterdir())
            except OSError:
                continue
            try:
                out.extend(base + name for name in names if go_match(component, name))
            except ValueError as exc:
                raise ContextError(str(exc)) from None
        return out

    def entry(self, rel: str, real: str) -> ContextEntry:
        path = self.abs(real)
        info = path.lstat()
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISLNK(info.st_mode):
            target = str(path.readlink())
            return ContextEntry(rel, "symlink", mode, info.st_uid, info.st_gid, 0, target)
        if stat.S_ISDIR(info.st_mode):
            return ContextEntry(rel, "dir", mode, info.st_uid, info.st_gid)
        if stat.S_ISREG(info.st_mode):
            return ContextEntry(
                rel, "file", mode, info.st_uid, info.st_gid, info.st_size, file_digest(path)
            )
        return ContextEntry(rel, "other", mode, info.st_uid, info.st_gid)

    def walk(self, rel: str, real: str) -> list[ContextEntry]:
        """Entries under the directory ``rel`` (its real path ``real``), ignore rules applied."""
        out: list[ContextEntry] = []
        try:
            names = sorted(child.name for child in self.abs(real).iterdir())
        except OSError as exc:
            raise ContextError("cannot read %s: %s" % (rel, exc.strerror)) from None
        for name in names:
            child = name if rel == "." else rel + "/" + name
            child_real = name if real == "." else real + "/" + name
            excluded = not (self.visible(child) and self.visible(child_real))
            if excluded and not self.matcher.may_reinclude_below(child):
                continue
            entry = self.entry(child, child_real)
            below = self.walk(child, child_real) if entry.kind == "dir" else []
            if not excluded or below:
                out.append(entry)
            out.extend(below)
        return out


def context_sources(
    context_dir: str,
    sources: Iterable[str],
    matcher: IgnoreMatcher | None = None,
    excludes: Iterable[str] = (),
) -> list[SourceMatch]:
    """Every context path the COPY/ADD ``sources`` cover; raises ContextError if one is missing.

    ``excludes`` are the ``--exclude`` patterns, matched like ``.dockerignore``
    patterns against paths relative to each matched source.
    """
    ctx = _Context(context_dir, matcher or IgnoreMatcher([]))
    exclude = IgnoreMatcher(excludes)
    out: list[SourceMatch] = []
    for source in sources:
        roots = ctx.expand(source)
        if not roots:
            raise ContextError(
                "source %r not found in the build context %s (or excluded by .dockerignore); "
                "expected a path inside the context" % (source, context_dir)
            )
        for root in roots:
            out.append(_source_match(ctx, source, root, exclude))
    return out


def instruction_sources(
    context_dir: str, instr: CopyInstr, matcher: IgnoreMatcher | None = None
) -> list[SourceMatch]:
    """The context entries an (expanded) COPY/ADD reads.

    Nothing for ``COPY --from`` (its sources are in another stage or image);
    ADD's URL and Git sources are skipped (see ``PlanStep.remote_sources``).
    Heredoc sources are part of the step's identity, not of the context.
    """
    if instr.from_:
        return []
    local = [src for src in instr.sources if not (instr.add and is_remote_source(src))]
    return context_sources(context_dir, local, matcher, instr.excludes)


def _source_match(ctx: _Context, source: str, root: str, exclude: IgnoreMatcher) -> SourceMatch:
    real = ctx.resolve(root)
    if not _lexists(ctx.abs(real)):
        raise ContextError("source %r points to %r, which does not exist" % (source, real))
    match = SourceMatch(source, root)
    entry = ctx.entry(root, real)
    if entry.kind == "dir":
        entries = [entry] if root != "." else []
        prefix = "" if root == "." else root + "/"
        for child in ctx.walk(root, real):
            if not exclude.patterns or not exclude.excluded(child.path[len(prefix) :]):
                entries.append(child)
        match.entries = entries
    elif not exclude.patterns or not exclude.excluded(root.rsplit("/", 1)[-1]):
        match.entries = [entry]
    return match


def _lexists(path: Path) -> bool:
    return path.is_symlink() or path.exists()


def file_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def sources_digest(matches: Iterable[SourceMatch]) -> str:
    """One digest over what the sources cover: paths, types, modes, owners, targets, contents."""
    digest = hashlib.sha256()
    for match in matches:
        header = {"source": match.source, "root": match.root}
        digest.update(json.dumps(header, sort_keys=True).encode("utf-8", "surrogateescape") + b"\n")
        for entry in match.entries:
            row = [
                entry.path,
                entry.kind,
                entry.mode,
                entry.uid,
                entry.gid,
                entry.link_target,
                entry.digest,
            ]
            digest.update(json.dumps(row).encode("utf-8", "surrogateescape") + b"\n")
    return "sha256:" + digest.hexdigest()
