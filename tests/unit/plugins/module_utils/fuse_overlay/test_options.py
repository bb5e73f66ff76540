"""Pure helpers of the fuse backend: option strings, helper arguments, format tests."""

import os
import stat

import pytest

from ansible_collections.lapis.layers.plugins.module_utils.fuse_overlay import options as opts


@pytest.mark.parametrize(
    ("text", "sep", "parts"),
    [
        ("/a:/b", ":", ["/a", "/b"]),
        ("/a\\:b:/c", ":", ["/a:b", "/c"]),
        ("/a\\\\:/b", ":", ["/a\\", "/b"]),
        ("", ":", [""]),
        ("trailing\\", ":", ["trailing\\"]),
    ],
)
def test_split_escaped(text: str, sep: str, parts: list[str]) -> None:
    assert opts.split_escaped(text, sep) == parts


@pytest.mark.parametrize(
    "path", ["/plain", "/with:colon", "/with,comma", "/back\\slash", "/sp ace"]
)
def test_escaped_paths_survive_the_option_string(path: str) -> None:
    config = opts.OverlayConfig("/mnt", [path, "/second"], path + "-up", path + "-work")
    again = opts.build_config("/mnt", opts.format_options(config))
    assert again.lowerdirs == [path, "/second"]
    assert (again.upperdir, again.workdir) == (path + "-up", path + "-work")


def test_build_config_reads_every_option() -> None:
    text = "lowerdir=/l1:/l2,upperdir=/u,workdir=/w,userxattr,volatile,logfile=/x.log,ro,nodev"
    config = opts.build_config("/mnt", text + ",defaults,noauto,x-systemd.requires=a,rw")
    assert config.lowerdirs == ["/l1", "/l2"]
    assert config.userxattr and config.volatile
    assert config.logfile == "/x.log"
    assert config.fuse_options == ["ro", "nodev"]
    assert config.readonly


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("upperdir=/u,workdir=/w", "lowerdir= is required"),
        ("lowerdir=/l,upperdir=/u", "upperdir and workdir go together"),
        ("lowerdir=/l,upperdir=/u,workdir=/u/work", "must not be inside each other"),
        ("lowerdir=/l,redirect_dir=on", "not supported by the fuse backend"),
        ("lowerdir=/l,metacopy=on", "not supported by the fuse backend"),
        ("lowerdir=/l,bogus", "unknown mount option 'bogus'"),
    ],
)
def test_build_config_rejects_with_reason(text: str, words: str) -> None:
    with pytest.raises(opts.OptionError, match=words):
        opts.build_config("/mnt", text)


def test_read_only_union_without_upperdir() -> None:
    assert opts.build_config("/mnt", "lowerdir=/a:/b").readonly


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["none", "/mnt", "-o", "lowerdir=/l"], ("none", "/mnt", "lowerdir=/l", False)),
        (["-n", "src", "/m", "-olowerdir=/l", "-t", "fuse.x"], ("src", "/m", "lowerdir=/l", False)),
        (["a", "/m", "-o", "lowerdir=/l", "-o", "ro", "-f"], ("a", "/m", "lowerdir=/l,ro", True)),
        (["a", "/m", "-s", "-v", "-N", "ns", "-o", "x"], ("a", "/m", "x", False)),
    ],
)
def test_parse_helper_argv(argv: list[str], expected: tuple[str, str, str, bool]) -> None:
    args = opts.parse_helper_argv(argv)
    assert (args.source, args.mountpoint, args.options, args.foreground) == expected


@pytest.mark.parametrize("argv", [["only-one"], ["a", "b", "c"], ["a", "b", "--weird"]])
def test_parse_helper_argv_rejects(argv: list[str]) -> None:
    with pytest.raises(opts.OptionError):
        opts.parse_helper_argv(argv)


def _with_rdev(mode: int, rdev: int) -> os.stat_result:
    values = [mode, 1, 2, 1, 0, 0, 0, 0, 0, 0] + [0] * 6
    fields = {"st_rdev": rdev}
    return os.stat_result(values, fields)


@pytest.mark.parametrize(
    ("mode", "rdev", "result"),
    [
        (stat.S_IFCHR, 0, True),
        (stat.S_IFCHR | 0o644, os.makedev(1, 3), False),
        (stat.S_IFREG, 0, False),
        (stat.S_IFBLK, 0, False),
    ],
)
def test_is_whiteout(mode: int, rdev: int, result: bool) -> None:
    assert opts.is_whiteout(_with_rdev(mode, rdev)) is result


@pytest.mark.parametrize(
    ("name", "userxattr", "private"),
    [
        ("trusted.overlay.opaque", False, True),
        ("trusted.overlay.redirect", True, True),
        ("user.overlay.opaque", False, False),
        ("user.overlay.opaque", True, True),
        ("user.color", True, False),
        ("security.capability", False, False),
    ],
)
def test_private_xattrs_hidden_from_users(name: str, userxattr: bool, private: bool) -> None:
    assert opts.is_private_xattr(name, userxattr) is private


def test_opaque_xattr_names() -> None:
    assert opts.opaque_xattr(False) == "trusted.overlay.opaque"
    assert opts.opaque_xattr(True) == "user.overlay.opaque"


def test_state_paths_are_per_mountpoint_and_normalised() -> None:
    pid, state = opts.state_paths("/srv/a/", "/run/x")
    assert (pid, state) == opts.state_paths("/srv//a", "/run/x")
    assert pid.startswith("/run/x/mnt-") and pid.endswith(".pid") and state.endswith(".json")
    assert opts.state_paths("/srv/b", "/run/x") != (pid, state)
    assert opts.default_logfile("/srv/a").startswith(opts.LOG_DIR + "/")
