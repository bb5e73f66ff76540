"""UCI parsing and rendering over real-world-style /etc/config/fstab files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils import uci
from ansible_collections.lapis.layers.plugins.module_utils.extroot import (
    edit_fstab_absent,
    edit_fstab_present,
)

FIXTURES = Path(__file__).parent / "uci_fixtures"
# Files edited on Windows end their lines with CR LF. Such a file is generated here,
# not committed: the repository keeps LF line ends only.
GENERATED = {
    "crlf.fstab": "config global\n\toption anon_swap '0'\n\nconfig mount 'x'\n"
    "\toption target '/mnt/x'\n".replace("\n", "\r\n"),
}
ALL = sorted([*(p.name for p in FIXTURES.glob("*.fstab")), *GENERATED])
UUID = "6a1f5c2e-0d4b-4e8a-9c3f-2b7d1e0a9f11"


def fixture(name: str) -> str:
    if name in GENERATED:
        return GENERATED[name]
    return (FIXTURES / name).read_bytes().decode()


@pytest.mark.parametrize("name", ALL)
def test_render_of_parse_is_byte_identical(name: str) -> None:
    text = fixture(name)
    assert uci.render(uci.parse(text)) == text


def test_block_detect_style_quoted_types_and_tabs() -> None:
    doc = uci.parse(fixture("block-detect.fstab"))
    assert [s.type for s in doc.sections] == ["global", "mount"]
    assert doc.sections[0].get("delay_root") == "5"
    mount = doc.sections[1]
    assert mount.name is None and doc.ref(mount) == "@mount[0]"
    assert mount.options() == {
        "target": "/mnt/sda1",
        "uuid": "9ea7d4a5-2a3e-4d31-9ec7-3b8a0b8b6c35",
        "enabled": "0",
    }


def test_hand_edited_quoting_styles_lists_and_comments() -> None:
    doc = uci.parse(fixture("hand-edited.fstab"))
    glob = doc.sections[0]
    assert glob.get("anon_swap") == "0" and glob.get("anon_mount") == "0"
    assert glob.get("auto_mount") == "1", "a comment after the value is not part of it"
    old = doc.sections[1]
    assert old.name is None and old.get("target") == "/overlay"
    data = doc.find("usbdata")
    assert data is not None
    assert data.get("target") == "/mnt/usb data"
    assert data.get("uuid") == "c2f1-ab12", "concatenated quoted and bare pieces"
    assert data.get_list("extra_opts") == ["a", "b c", "d e"]
    assert data.get("note") == 'a "quoted" word and a \\ backslash'


def test_multiline_value() -> None:
    doc = uci.parse(fixture("multiline.fstab"))
    media = doc.find("media")
    assert media is not None and media.get("comment") == "first line\nsecond line"
    assert media.get("enabled") == "1"
    assert doc.ref(doc.sections[1]) == "@swap[0]"


def test_crlf_line_ends() -> None:
    text = fixture("crlf.fstab")
    assert "\r\n" in text
    doc = uci.parse(text)
    section = doc.find("x")
    assert section is not None and section.get("target") == "/mnt/x"
    assert uci.render(doc) == text


def test_anonymous_index_counts_named_sections_of_the_type() -> None:
    doc = uci.parse(fixture("uci-export.fstab"))
    swap = doc.of_type("swap")[0]
    assert doc.ref(swap) == "@swap[0]"
    rwm = doc.find("rwm")
    assert rwm is not None and doc.ref(rwm) == "rwm"
    assert doc.preamble[0].keyword == "package"


def test_set_rewrites_only_that_line() -> None:
    text = fixture("hand-edited.fstab")
    doc = uci.parse(text)
    section = doc.find("usbdata")
    assert section is not None
    assert section.set("enabled", "0") is True
    assert section.set("enabled", "0") is False
    new = uci.render(doc)
    changed = [(a, b) for a, b in zip(text.splitlines(), new.splitlines(), strict=True) if a != b]
    assert changed == [("\toption enabled 1", "\toption enabled '0'")]


def test_set_new_option_goes_after_the_last_option_not_after_trailing_comments() -> None:
    doc = uci.parse("config a 'x'\n\toption one '1'\n\n# about b\nconfig b\n")
    section = doc.find("x")
    assert section is not None
    section.set("two", "2")
    assert (
        uci.render(doc)
        == "config a 'x'\n\toption one '1'\n\toption two '2'\n\n# about b\nconfig b\n"
    )


def test_add_section_to_a_file_without_final_newline() -> None:
    doc = uci.parse(fixture("no-final-newline.fstab"))
    doc.sections[-1].set("enabled", "1")
    new = doc.add("mount", "extroot")
    new.set("target", "/overlay")
    text = uci.render(doc)
    assert text.endswith(
        "\toption target '/mnt/last'\n\toption enabled '1'\n\n"
        "config mount 'extroot'\n\toption target '/overlay'\n"
    )
    assert uci.render(uci.parse(text)) == text


@pytest.mark.parametrize("value", ["it's", "a 'b' c", "back\\slash", "", "line\nbreak", '"dq"'])
def test_quote_round_trips(value: str) -> None:
    doc = uci.parse("config mount 'm'\n")
    section = doc.find("m")
    assert section is not None
    section.set("v", value)
    again = uci.parse(uci.render(doc)).find("m")
    assert again is not None and again.get("v") == value


def test_delete_removes_options_and_lists() -> None:
    doc = uci.parse(fixture("hand-edited.fstab"))
    section = doc.find("usbdata")
    assert section is not None
    assert section.delete("extra_opts") is True
    assert section.get_list("extra_opts") == []
    assert section.delete("extra_opts") is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("config mount 'x\n", "line 1: unterminated ' quote"),
        ('config mount\n\toption a "b\n', 'line 2: unterminated " quote'),
        ("\toption a 'b'\n", "line 1: 'option' outside of a config section"),
        ("config mount\n\tsetting a 'b'\n", "line 2: unknown keyword 'setting'"),
        ("config mount\n\toption a-b 'c'\n", "line 2: invalid option name 'a-b'"),
        ("config mount\n\toption a\n", "line 2: 'option' takes 2-2 arguments"),
    ],
)
def test_bad_syntax_names_the_line(text: str, message: str) -> None:
    with pytest.raises(uci.UciError, match=message):
        uci.parse(text)


def test_injected_section_names_are_rejected() -> None:
    doc = uci.parse("")
    with pytest.raises(uci.UciError, match="invalid UCI section name"):
        doc.add("mount", "x'; reboot; '")
    with pytest.raises(uci.UciError, match="already exists"):
        doc.add("mount", "a")
        doc.add("mount", "a")


@pytest.mark.parametrize("name", ALL)
def test_extroot_edit_is_idempotent_and_keeps_other_sections(name: str) -> None:
    text = fixture(name)
    first = edit_fstab_present(text, "/overlay", UUID, "/dev/ubi0_1")
    assert first.changed
    second = edit_fstab_present(first.after, "/overlay", UUID, "/dev/ubi0_1")
    assert not second.changed and second.uci_lines == []
    before, after = uci.parse(text), uci.parse(first.after)
    untouched = [s for s in before.sections if s.type not in ("mount",)]
    for section in untouched:
        match = [s for s in after.sections if s.header.raw == section.header.raw]
        assert match, section.header.raw
        assert [ln for ln in match[0].body if ln.raw.strip()] == [
            ln for ln in section.body if ln.raw.strip()
        ]
    enabled = [
        s
        for s in after.of_type("mount")
        if s.get("target") == "/overlay" and s.get("enabled") != "0"
    ]
    assert len(enabled) == 1 and enabled[0].get("uuid") == UUID
    absent = edit_fstab_absent(first.after, "/overlay")
    assert absent.changed
    assert not edit_fstab_absent(absent.after, "/overlay").changed


def test_extroot_edit_reuses_the_wiki_overlay_section_and_its_uci_lines() -> None:
    edit = edit_fstab_present(fixture("uci-export.fstab"), "/overlay", UUID, "/dev/ubi0_1")
    doc = uci.parse(edit.after)
    assert doc.find("extroot") is None
    overlay = doc.find("overlay")
    assert overlay is not None and overlay.get("uuid") == UUID
    assert edit.uci_lines == [
        f"set fstab.overlay.uuid='{UUID}'",
        "set fstab.overlay.enabled='1'",
        "set fstab.rwm.enabled='1'",
    ]


def test_extroot_edit_disables_a_rival_anonymous_section() -> None:
    edit = edit_fstab_present(fixture("hand-edited.fstab"), "/overlay", UUID, None)
    assert edit.uci_lines == [
        f"set fstab.@mount[0].uuid='{UUID}'",
        "delete fstab.@mount[0].device",
        "set fstab.@mount[0].enabled='1'",
    ]
    doc = uci.parse(edit.after)
    old = doc.of_type("mount")[0]
    assert old.get("device") is None and old.get("uuid") == UUID and old.get("enabled") == "1"


def replay_uci_batch(text: str, lines: list[str]) -> uci.Document:
    """Apply ``uci batch`` lines the way uci reads them: set (section or option), delete."""
    doc = uci.parse(text)

    def section(ref: str) -> uci.Section:
        if ref.startswith("@"):
            type_, index = ref[1:].rstrip("]").split("[")
            return doc.of_type(type_)[int(index)]
        found = doc.find(ref)
        assert found is not None, ref
        return found

    for line in lines:
        verb, path = line.split(" ", 1)
        key, _eq, value = path.partition("=")
        parts = key.split(".")
        assert parts[0] == "fstab", line
        if verb == "set" and len(parts) == 2:
            doc.add(value, parts[1])
        elif verb == "set":
            words = uci.parse(f"config x\n\toption v {value}\n").sections[0].get("v")
            assert words is not None, line
            section(parts[1]).set(parts[2], words)
        else:
            assert verb == "delete" and len(parts) == 3, line
            section(parts[1]).delete(parts[2])
    return doc


def options_by_section(doc: uci.Document) -> list[tuple[str, str | None, dict[str, str]]]:
    return [(s.type, s.name, s.options()) for s in doc.sections]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("rwm", ["/dev/ubi0_1", None])
def test_uci_batch_lines_make_the_same_configuration_as_the_rewrite(
    name: str, rwm: str | None
) -> None:
    """The uci path (routers with uci) and the file path (without) agree on every option."""
    text = fixture(name)
    present = edit_fstab_present(text, "/overlay", UUID, rwm)
    replayed = replay_uci_batch(text, present.uci_lines)
    assert options_by_section(replayed) == options_by_section(uci.parse(present.after))
    absent = edit_fstab_absent(present.after, "/overlay")
    replayed = replay_uci_batch(present.after, absent.uci_lines)
    assert options_by_section(replayed) == options_by_section(uci.parse(absent.after))
