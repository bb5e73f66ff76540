"""fstab: round trips keep comments and unrelated lines; atomic writes; escapes."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.fstab import (
    FstabEntry,
    backup_file,
    find_entry,
    locked,
    mangle,
    parse_entry,
    parse_fstab,
    read_text,
    render_fstab,
    restore,
    set_entry,
    unmangle,
    write_atomic,
)

SAMPLE = """\
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
UUID=1234-abcd  /               ext4    errors=remount-ro 0       1
\t# an indented comment
/dev/sr0        /media/cdrom0   udf,iso9660 user,noauto     0       0

overlay /srv/merged overlay lowerdir=/srv/a:/srv/b,upperdir=/srv/u,workdir=/srv/w 0 0
tmpfs /tmp tmpfs
"""


@pytest.mark.parametrize(
    ("field", "mangled"),
    [
        ("/plain", "/plain"),
        ("/with space", "/with\\040space"),
        ("/tab\there", "/tab\\011here"),
        ("/back\\slash", "/back\\134slash"),
        ("lowerdir=/a\\,b", "lowerdir=/a\\134,b"),
    ],
)
def test_mangle_round_trip(field: str, mangled: str) -> None:
    assert mangle(field) == mangled
    assert unmangle(mangled) == field


@pytest.mark.parametrize(
    "text",
    [SAMPLE, "", "\n", "# only a comment", "no newline at end /x ext4 defaults 0 0", "a b\n\n\n"],
)
def test_round_trip_is_byte_for_byte(text: str) -> None:
    assert render_fstab(parse_fstab(text)) == text


def test_parse_entries_and_defaults() -> None:
    lines = parse_fstab(SAMPLE)
    entries = [line.entry for line in lines if line.entry]
    assert [e.mount_point for e in entries] == ["/", "/media/cdrom0", "/srv/merged", "/tmp"]
    tmp = find_entry(lines, "/tmp")
    assert tmp == FstabEntry("tmpfs", "/tmp", "tmpfs", "defaults", "0", "0")


@pytest.mark.parametrize("line", ["", "   ", "# comment /x ext4", "onlytwo fields"])
def test_parse_entry_skips_non_entries(line: str) -> None:
    assert parse_entry(line) is None


def test_replace_keeps_everything_else() -> None:
    lines = parse_fstab(SAMPLE)
    new = FstabEntry("overlay", "/srv/merged", "overlay", "lowerdir=/srv/c,upperdir=/u,workdir=/w")
    text = render_fstab(set_entry(lines, "/srv/merged", new))
    before, after = SAMPLE.splitlines(), text.splitlines()
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert len(before) == len(after)
    assert changed == [7]
    assert after[7] == new.render()


def test_append_adds_missing_newline() -> None:
    lines = parse_fstab("# no newline")
    new = FstabEntry("overlay", "/m", "overlay", "lowerdir=/a")
    assert (
        render_fstab(set_entry(lines, "/m", new))
        == "# no newline\noverlay /m overlay lowerdir=/a 0 0\n"
    )


def test_duplicates_collapse_into_the_first() -> None:
    text = "overlay /m overlay lowerdir=/a 0 0\n# keep\noverlay /m overlay lowerdir=/b 0 0\n"
    new = FstabEntry("overlay", "/m", "overlay", "lowerdir=/c")
    out = render_fstab(set_entry(parse_fstab(text), "/m", new))
    assert out == "overlay /m overlay lowerdir=/c 0 0\n# keep\n"


def test_remove_entry() -> None:
    out = render_fstab(set_entry(parse_fstab(SAMPLE), "/srv/merged", None))
    assert "/srv/merged" not in out
    assert out.count("\n") == SAMPLE.count("\n") - 1
    assert "# an indented comment" in out


def test_escaped_entry_round_trip() -> None:
    entry = FstabEntry("overlay", "/m 2", "overlay", "lowerdir=/l\\,1:/l\\:2:/l 3,upperdir=/u")
    line = entry.render()
    assert " " not in line.split(" ", 2)[1]
    assert parse_entry(line) == entry


def test_write_atomic_keeps_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "fstab"
    target.write_text("old\n")
    target.chmod(0o600)
    write_atomic(str(target), "new\n")
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fstab"]


def test_write_atomic_creates_file(tmp_path: Path) -> None:
    target = tmp_path / "fresh"
    write_atomic(str(target), "x\n")
    assert target.read_text() == "x\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_write_atomic_failure_leaves_original(tmp_path: Path) -> None:
    target = tmp_path / "fstab"
    target.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(str(target), "a lone surrogate cannot be encoded: \ud800\n")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fstab"]


def test_backup_and_restore(tmp_path: Path) -> None:
    target = tmp_path / "fstab"
    target.write_text("one\n")
    copy = backup_file(str(target))
    assert Path(copy).read_text() == "one\n"
    assert copy.endswith("~")
    write_atomic(str(target), "two\n")
    restore(str(target), "one\n")
    assert target.read_text() == "one\n"
    restore(str(target), None)
    assert not target.exists()
    assert read_text(str(target)) is None


def test_lock_serialises_two_writers(tmp_path: Path) -> None:
    target = str(tmp_path / "fstab")
    order: list[str] = []
    entered = threading.Event()

    def second() -> None:
        entered.wait()
        with locked(target):
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with locked(target):
        entered.set()
        time.sleep(0.2)  # give the second writer the chance to (wrongly) get in first
        order.append("first")
    thread.join()
    assert order == ["first", "second"]


def test_lock_does_not_leave_files(tmp_path: Path) -> None:
    with locked(str(tmp_path / "fstab")):
        pass
    assert list(tmp_path.iterdir()) == []
