""".dockerignore matching and COPY/ADD source listing against real directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_context import (
    ContextError,
    IgnoreMatcher,
    compile_ignore_pattern,
    context_sources,
    find_ignore_file,
    go_match,
    instruction_sources,
    load_ignore_matcher,
    read_ignore_patterns,
    sources_digest,
)
from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_instructions import (
    CopyInstr,
)
from ansible_collections.lapis.layers.plugins.module_utils.dockerfile_plan import plan_build

# --- .dockerignore -------------------------------------------------------------------------


def test_read_ignore_patterns_normalises_lines() -> None:
    text = "\ufeff# comment\n  /abs/path/ \n\n! keep/./me\n  # not a comment\nweird//x/../y\r\n"
    assert read_ignore_patterns(text) == ["abs/path", "!keep/me", "# not a comment", "weird/y"]


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("**", "file", True),
        ("**", "dir/file", True),
        ("**/", "file", True),
        ("dir/**", "dir/file", True),
        ("dir/**", "dir/dir2/file", True),
        ("abc/**", "abc", False),
        ("**/dir2/*", "dir/dir2/file", True),
        ("**/dir2/**", "dir/dir2/dir3/file", True),
        ("**file", "file", True),
        ("**file", "dir/file", True),
        ("**/file", "dir/dir/file", True),
        ("**/file*", "dir/dir/file.txt", True),
        ("**/file*.txt", "dir/dir/file.txt", True),
        ("**/**/*.txt", "dir/dir/file.txt", True),
        ("**/**/*.txt2", "dir/dir/file.txt", False),
        ("**/*.txt", "file.txt", True),
        ("a**/*.txt", "a/dir/dir/file.txt", True),
        ("a/*.txt", "a/dir/file.txt", False),
        ("a/*.txt", "a/file.txt", True),
        ("a/*.txt**", "a/file.txt", True),
        ("a[b-d]e", "ace", True),
        ("a[b-d]e", "aae", False),
        ("a[^b-d]e", "aze", True),
        (".*", ".foo", True),
        (".*", "foo", False),
        ("abc.def", "abcZdef", False),
        ("abc?def", "abcZdef", True),
        ("abc?def", "abc/def", False),
        ("**/foo/bar", "foo/bar", True),
        ("**/.foo", "bar.foo", False),
        ("a(b)c/def", "a(b)c/def", True),
        ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
        ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
        ("temp?", "tempa", True),
        ("temp?", "temp/a", False),
    ],
)
def test_pattern_match(pattern: str, path: str, matches: bool) -> None:
    assert compile_ignore_pattern(pattern).match(path) is matches


# The examples of Docker's .dockerignore documentation.
DOC_EXAMPLE = ["*/temp*", "*/*/temp*", "temp?"]


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("somedir/temporary.txt", True),
        ("somedir/temp", True),
        ("somedir/temp/inside", True),
        ("somedir/subdir/temporary.txt", True),
        ("tempa", True),
        ("tempb/child", True),
        ("temporary.txt", False),
        ("a/b/c/temp", False),
    ],
)
def test_docs_example_temp_patterns(path: str, excluded: bool) -> None:
    assert IgnoreMatcher(DOC_EXAMPLE).excluded(path) is excluded


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        (["*.md", "!README.md"], "CHANGES.md", True),
        (["*.md", "!README.md"], "README.md", False),
        (["*.md", "!README*.md", "README-secret.md"], "README-secret.md", True),
        (["*.md", "!README*.md", "README-secret.md"], "README-public.md", False),
        (["*.md", "README-secret.md", "!README*.md"], "README-secret.md", False),
        (["**/*.go"], "a/b/c.go", True),
        (["**/*.go"], "c.go", True),
        (["node_modules"], "node_modules/x/y.js", True),
        (["/node_modules"], "node_modules/x/y.js", True),
        (["docs", "!docs/keep.md"], "docs/keep.md", False),
        (["docs", "!docs/keep.md"], "docs/drop.md", True),
        (["build/"], "build/out", True),
        (["!x"], "x", False),
    ],
)
def test_last_match_wins_and_exceptions(patterns: list[str], path: str, excluded: bool) -> None:
    assert IgnoreMatcher(read_ignore_patterns("\n".join(patterns))).excluded(path) is excluded


def test_bare_exclamation_mark_is_rejected() -> None:
    with pytest.raises(ValueError, match="illegal exclusion pattern"):
        compile_ignore_pattern("!")


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("*.go", "a.go", True),
        ("*.go", ".go", True),
        ("?.go", "ab.go", False),
        ("[a-c]x", "bx", True),
        ("[^a-c]x", "bx", False),
        ("\\*x", "*x", True),
        ("\\*x", "ax", False),
    ],
)
def test_go_match(pattern: str, name: str, matches: bool) -> None:
    assert go_match(pattern, name) is matches


@pytest.mark.parametrize("pattern", ["[", "[a-", "x\\", "[]"])
def test_go_match_rejects_malformed_patterns(pattern: str) -> None:
    with pytest.raises(ValueError, match="syntax error in pattern"):
        go_match(pattern, "x")


def test_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("a\n")
    dockerfile = tmp_path / "build" / "app.Dockerfile"
    dockerfile.parent.mkdir()
    dockerfile.write_text("FROM a\n")
    assert find_ignore_file(str(tmp_path), str(dockerfile)) == str(tmp_path / ".dockerignore")
    (tmp_path / "build" / "app.Dockerfile.dockerignore").write_text("b\n")
    matcher = load_ignore_matcher(str(tmp_path), str(dockerfile))
    assert (matcher.excluded("b"), matcher.excluded("a")) == (True, False)


# --- sources ---------------------------------------------------------------------------------


@pytest.fixture
def context(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    for rel, text in {
        "src/main.go": "package main\n",
        "src/util/util.go": "package util\n",
        "src/util/notes.txt": "notes\n",
        "docs/keep.md": "keep\n",
        "docs/drop.md": "drop\n",
        "node_modules/x/index.js": "x\n",
        "README.md": "readme\n",
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / ".dockerignore").write_text("node_modules\n**/*.txt\ndocs\n!docs/keep.md\n")
    (root / "src" / "link").symlink_to("main.go")
    return root


def _paths(root: Path, sources: list[str], excludes: tuple[str, ...] = ()) -> list[str]:
    matches = context_sources(str(root), sources, load_ignore_matcher(str(root)), excludes)
    return [entry.path for match in matches for entry in match.entries]


def test_directory_source_lists_everything_not_ignored(context: Path) -> None:
    assert _paths(context, ["src"]) == [
        "src",
        "src/link",
        "src/main.go",
        "src/util",
        "src/util/util.go",
    ]


def test_whole_context_with_exceptions(context: Path) -> None:
    paths = _paths(context, ["."])
    assert "docs/keep.md" in paths
    assert "docs" in paths
    assert not any(p.startswith("node_modules") or p.endswith(".txt") for p in paths)
    assert "docs/drop.md" not in paths


def test_wildcards_per_component(context: Path) -> None:
    assert _paths(context, ["src/*.go", "*/util/*.go"]) == ["src/main.go", "src/util/util.go"]


def test_excluded_directory_with_kept_child_is_visible(context: Path) -> None:
    assert _paths(context, ["docs"]) == ["docs", "docs/keep.md"]


def test_exception_reaches_into_excluded_directory_only_by_its_prefix(context: Path) -> None:
    (context / ".dockerignore").write_text("docs\n!**/keep.md\n")
    assert not any(p.startswith("docs") for p in _paths(context, ["."]))
    (context / ".dockerignore").write_text("docs\n!docs/*.md\n")
    assert [p for p in _paths(context, ["."]) if p.startswith("docs")] == [
        "docs",
        "docs/drop.md",
        "docs/keep.md",
    ]


def test_copy_exclude_flag(context: Path) -> None:
    assert _paths(context, ["src"], excludes=("util",)) == ["src", "src/link", "src/main.go"]


@pytest.mark.parametrize("source", ["missing", "node_modules", "src/util/notes.txt", "*.none"])
def test_missing_or_ignored_source_is_an_error(context: Path, source: str) -> None:
    with pytest.raises(ContextError, match=r"source '.*' not found in the build context"):
        _paths(context, [source])


def test_dotdot_escape_is_clamped_to_the_context(context: Path) -> None:
    assert _paths(context, ["../../../src/main.go"]) == ["src/main.go"]


def test_symlink_escape_is_scoped_to_the_context(context: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("outside\n")
    (context / "src" / "abs").symlink_to(str(secret))
    (context / "src" / "rel").symlink_to("../../secret")
    for source in ("src/abs/key", "src/rel/key"):
        with pytest.raises(ContextError):
            _paths(context, [source])


def test_symlinked_source_is_followed_inside_the_context(context: Path) -> None:
    matches = context_sources(str(context), ["src/link"])
    entry = matches[0].entries[0]
    assert (entry.path, entry.kind, entry.size) == ("src/link", "file", len("package main\n"))


def test_symlink_inside_directory_is_listed_as_symlink(context: Path) -> None:
    entries = {e.path: e for m in context_sources(str(context), ["src"]) for e in m.entries}
    assert (entries["src/link"].kind, entries["src/link"].link_target) == ("symlink", "main.go")


def test_sources_digest_tracks_content_and_metadata_not_mtime(context: Path) -> None:
    def digest() -> str:
        return sources_digest(context_sources(str(context), ["src"]))

    first = digest()
    assert digest() == first
    main = context / "src" / "main.go"
    os.utime(main, (1, 1))
    assert digest() == first
    main.write_text("package main // changed\n")
    changed = digest()
    assert changed != first
    main.chmod(0o600)
    assert digest() != changed
    main.write_text("package main\n")
    main.chmod(0o644)
    os.utime(main, (2, 2))
    assert digest() == first
    (context / "src" / "new.go").write_text("")
    assert digest() != first


def test_instruction_sources_of_planned_steps(context: Path) -> None:
    text = (
        "FROM a AS other\nFROM a\nARG DIR=src\nCOPY --exclude=util $DIR/ /app/\n"
        "ADD https://example.com/x.tgz docs /opt/\nCOPY --from=other /x /x\n"
    )
    matcher = load_ignore_matcher(str(context))
    found = []
    for step in plan_build(text).target_stage.steps:
        if isinstance(step.instruction, CopyInstr):
            matches = instruction_sources(str(context), step.instruction, matcher)
            found.append([e.path for m in matches for e in m.entries])
    assert found == [["src", "src/link", "src/main.go"], ["docs", "docs/keep.md"], []]
