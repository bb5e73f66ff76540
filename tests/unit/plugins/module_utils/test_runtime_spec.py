"""Unit tests for runtime_spec: image config + options -> OCI runtime config.json."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import jsonschema
import pytest

from ansible_collections.lapis.layers.plugins.module_utils import runtime_spec as rs
from ansible_collections.lapis.layers.plugins.module_utils.runtime_spec import (
    BindMount,
    ContainerOptions,
    RuntimeSpecError,
)

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
# a comment line
daemon:x:1:1:daemon:/usr/sbin:/bin/false
app:x:1000:1000:App user:/home/app:/bin/sh
nohome:x:1001:1001::
"""
GROUP = """\
root:x:0:
daemon:x:1:
app:x:1000:
audio:x:29:app,other
video:x:44:app
staff:x:50:
"""


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """An image root filesystem with users, groups and a program in /bin."""
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    (root / "bin").mkdir()
    prog = root / "bin" / "busybox"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o755)
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "usr" / "local" / "bin").mkdir(parents=True)
    return root


def config(rootfs: Path, image: dict | None = None, **opts) -> dict:
    return rs.runtime_config_from_image(
        {"config": image or {}}, str(rootfs), ContainerOptions(**opts)
    )


EP = {"Entrypoint": ["/ep"], "Cmd": ["a"]}


# --- users -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (None, (0, 0, [], "/root")),
        ("", (0, 0, [], "/root")),
        ("root", (0, 0, [], "/root")),
        ("app", (1000, 1000, [29, 44], "/home/app")),
        ("1000", (1000, 1000, [29, 44], "/home/app")),
        ("app:staff", (1000, 50, [], "/home/app")),
        ("app:50", (1000, 50, [], "/home/app")),
        ("1000:44", (1000, 44, [], "/home/app")),
        ("4242", (4242, 0, [], "/")),
        ("4242:4343", (4242, 4343, [], "/")),
        ("nohome", (1001, 1001, [], "/")),
    ],
)
def test_resolve_user(rootfs: Path, user, expected) -> None:
    resolved = rs.resolve_user(str(rootfs), user)
    assert (resolved.uid, resolved.gid, resolved.additional_gids, resolved.home) == expected


@pytest.mark.parametrize(
    ("user", "fragment"),
    [("nobody", "'nobody' is not in the image's /etc/passwd"), ("app:wheel", "group 'wheel'")],
)
def test_resolve_user_unknown_name_fails(rootfs: Path, user: str, fragment: str) -> None:
    with pytest.raises(RuntimeSpecError, match=fragment):
        rs.resolve_user(str(rootfs), user)


def test_resolve_user_without_passwd_accepts_only_numbers(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert rs.resolve_user(str(empty), "7:8").uid == 7
    with pytest.raises(RuntimeSpecError, match="not in the image's /etc/passwd"):
        rs.resolve_user(str(empty), "app")


def test_passwd_symlink_escape_reads_the_image_not_the_host(tmp_path: Path) -> None:
    """Absolute and climbing symlinks for /etc/passwd and /etc/group resolve inside the rootfs."""
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "pw").write_text("svc:x:77:77::/srv:/bin/sh\n")
    (root / "data" / "grp").write_text("svcgrp:x:88:\n")
    (root / "etc" / "passwd").symlink_to("/data/pw")
    (root / "etc" / "group").symlink_to("../../../../../../../../data/grp")
    assert rs.resolve_user(str(root), "svc:svcgrp").gid == 88
    # The host's /etc/group has a "root" group; the image's does not, so it is never read.
    with pytest.raises(RuntimeSpecError, match="group 'root'"):
        rs.resolve_user(str(root), "svc:root")
    # The host's /etc/passwd has "root"; the image's does not.
    with pytest.raises(RuntimeSpecError, match="'root' is not in the image's /etc/passwd"):
        rs.resolve_user(str(root), "root")


def test_symlink_loop_in_image_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").symlink_to("passwd")
    with pytest.raises(RuntimeSpecError, match="Too many levels of symbolic links"):
        rs.resolve_user(str(root), "app")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/etc/passwd", "etc/passwd"),
        ("/../../etc/passwd", "etc/passwd"),
        ("/bin/sh", "bin/busybox"),
        ("bin/./sh", "bin/busybox"),
    ],
)
def test_resolve_in_root_stays_inside(rootfs: Path, path: str, expected: str) -> None:
    assert rs.resolve_in_root(str(rootfs), path) == str(rootfs / expected)


# --- entrypoint, command, env, workdir ------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "opts", "args"),
    [
        (EP, {}, ["/ep", "a"]),
        (EP, {"command": ["b", "c"]}, ["/ep", "b", "c"]),
        (EP, {"entrypoint": ["/x"]}, ["/x"]),
        (
            {"Entrypoint": ["/ep"], "Cmd": ["a"]},
            {"entrypoint": ["/x"], "command": ["b"]},
            ["/x", "b"],
        ),
        (EP, {"entrypoint": [], "command": ["b"]}, ["b"]),
        ({"Cmd": ["sh", "-c", "echo"]}, {}, ["sh", "-c", "echo"]),
        ({"Cmd": ["sh"]}, {"command": []}, ["sh"]),
        ({}, {}, ["sh"]),
    ],
)
def test_entrypoint_and_command(rootfs: Path, image: dict, opts: dict, args: list) -> None:
    assert config(rootfs, image, **opts)["process"]["args"] == args


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("echo 'a b' c", ["echo", "a b", "c"]),
        (["echo", "a b"], ["echo", "a b"]),
        ("", []),
        (None, None),
    ],
)
def test_split_command(value, expected) -> None:
    assert rs.split_command(value, "command") == expected


def test_split_command_unbalanced_quote() -> None:
    with pytest.raises(RuntimeSpecError, match="Cannot split command"):
        rs.split_command("echo 'oops", "command")


def test_env_merge_image_then_options(rootfs: Path) -> None:
    image = {"Env": ["PATH=/opt/bin:/bin", "A=image", "B=image=with=equals"]}
    env = config(rootfs, image, env={"A": "option", "C": "new"}, user="app")["process"]["env"]
    assert env == [
        "PATH=/opt/bin:/bin",
        "A=option",
        "B=image=with=equals",
        "C=new",
        "HOME=/home/app",
    ]


def test_env_defaults_path_and_home(rootfs: Path) -> None:
    env = config(rootfs)["process"]["env"]
    assert env == [f"PATH={rs.DEFAULT_PATH}", "HOME=/root"]


def test_env_bad_name(rootfs: Path) -> None:
    with pytest.raises(RuntimeSpecError, match="Invalid environment variable name 'A=B'"):
        config(rootfs, env={"A=B": "x"})


def test_workdir(rootfs: Path) -> None:
    assert config(rootfs, {"WorkingDir": "/srv"})["process"]["cwd"] == "/srv"
    assert config(rootfs, {"WorkingDir": "/srv"}, workdir="/tmp")["process"]["cwd"] == "/tmp"
    assert config(rootfs)["process"]["cwd"] == "/"
    with pytest.raises(RuntimeSpecError, match="'srv' is not an absolute path"):
        config(rootfs, workdir="srv")


def test_image_user_used_unless_overridden(rootfs: Path) -> None:
    assert config(rootfs, {"User": "app"})["process"]["user"] == {
        "uid": 1000,
        "gid": 1000,
        "additionalGids": [29, 44],
    }
    assert config(rootfs, {"User": "app"}, user="0:0")["process"]["user"] == {"uid": 0, "gid": 0}


# --- capabilities -------------------------------------------------------------------------


def test_default_capabilities_are_the_usual_container_set(rootfs: Path) -> None:
    caps = config(rootfs)["process"]["capabilities"]
    assert set(caps) == {"bounding", "effective", "permitted"}
    assert set(caps["bounding"]) == set(rs.DEFAULT_CAPABILITIES)
    assert "CAP_SYS_ADMIN" not in caps["bounding"]


@pytest.mark.parametrize(
    ("add", "drop", "present", "absent"),
    [
        (["net_admin"], [], {"CAP_NET_ADMIN", "CAP_CHOWN"}, set()),
        (
            ["CAP_SYS_PTRACE"],
            ["chown", "NET_RAW"],
            {"CAP_SYS_PTRACE"},
            {"CAP_CHOWN", "CAP_NET_RAW"},
        ),
        ([], ["ALL"], set(), set(rs.ALL_CAPABILITIES)),
        (["kill"], ["all"], {"CAP_KILL"}, {"CAP_CHOWN"}),
        (["ALL"], [], set(rs.ALL_CAPABILITIES), set()),
    ],
)
def test_capability_add_drop(rootfs: Path, add, drop, present, absent) -> None:
    caps = set(config(rootfs, cap_add=add, cap_drop=drop)["process"]["capabilities"]["effective"])
    assert present <= caps
    assert not (absent & caps)


def test_unknown_capability(rootfs: Path) -> None:
    with pytest.raises(RuntimeSpecError, match="Unknown capability 'SYS_MAGIC'"):
        config(rootfs, cap_add=["SYS_MAGIC"])


# --- rlimits ------------------------------------------------------------------------------


def test_default_nofile_respects_host_hard_limit(rootfs: Path) -> None:
    (limit,) = config(rootfs)["process"]["rlimits"]
    host_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert limit["type"] == "RLIMIT_NOFILE"
    assert limit["hard"] <= host_hard
    assert limit["soft"] <= limit["hard"] <= 1024


def test_requested_rlimits(rootfs: Path) -> None:
    limits = config(rootfs, rlimits={"nproc": (100, 200), "RLIMIT_CORE": (0, 0)})["process"][
        "rlimits"
    ]
    by_type = {item["type"]: (item["soft"], item["hard"]) for item in limits}
    assert by_type["RLIMIT_NPROC"] == (100, 200)
    assert by_type["RLIMIT_CORE"] == (0, 0)


def test_rlimit_above_host_hard_limit_is_refused(rootfs: Path) -> None:
    host_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if host_hard == resource.RLIM_INFINITY:
        pytest.skip("this host has no hard RLIMIT_NOFILE")
    with pytest.raises(RuntimeSpecError, match="above this host's hard limit"):
        config(rootfs, rlimits={"nofile": (1024, host_hard + 1)})


@pytest.mark.parametrize(
    ("value", "expected"), [("1024", (1024, 1024)), ("10:20", (10, 20)), (7, (7, 7))]
)
def test_parse_rlimit(value, expected) -> None:
    assert rs.parse_rlimit("nofile", value) == expected


@pytest.mark.parametrize("value", ["x", "20:10", "-1", "1:2:3"])
def test_parse_rlimit_bad(value) -> None:
    with pytest.raises(RuntimeSpecError, match="Invalid rlimit"):
        rs.parse_rlimit("nofile", value)


def test_unknown_rlimit(rootfs: Path) -> None:
    with pytest.raises(RuntimeSpecError, match="Unknown rlimit 'files'"):
        config(rootfs, rlimits={"files": (1, 1)})


# --- mounts, network, resources -----------------------------------------------------------


def test_bind_mounts_ro_and_rw(rootfs: Path) -> None:
    mounts = config(
        rootfs,
        mounts=[BindMount("/srv/data", "/data", True), BindMount("/tmp", "/scratch/", False)],
    )["mounts"]
    binds = {m["destination"]: m for m in mounts if m["type"] == "bind"}
    assert binds["/data"]["options"][:2] == ["rbind", "ro"]
    assert binds["/scratch"]["options"][:2] == ["rbind", "rw"]
    assert binds["/data"]["source"] == "/srv/data"


@pytest.mark.parametrize(
    ("mount", "fragment"),
    [
        (BindMount("/a", "data"), "not absolute"),
        (BindMount("rel", "/data"), "not an absolute host path"),
    ],
)
def test_bad_bind_mounts(rootfs: Path, mount: BindMount, fragment: str) -> None:
    with pytest.raises(RuntimeSpecError, match=fragment):
        config(rootfs, mounts=[mount])


def test_duplicate_mount_destination(rootfs: Path) -> None:
    with pytest.raises(RuntimeSpecError, match="given twice"):
        config(rootfs, mounts=[BindMount("/a", "/d"), BindMount("/b", "/d/")])


def test_read_only_rootfs(rootfs: Path) -> None:
    assert config(rootfs)["root"]["readonly"] is False
    assert config(rootfs, read_only=True)["root"]["readonly"] is True


def test_root_path_override(rootfs: Path) -> None:
    assert config(rootfs)["root"]["path"] == str(rootfs)
    assert config(rootfs, root_path="rootfs")["root"]["path"] == "rootfs"


@pytest.mark.parametrize(("network", "has_netns"), [("none", True), ("host", False)])
def test_network_namespace(rootfs: Path, network: str, has_netns: bool) -> None:
    spec = config(rootfs, network=network)
    types = {ns["type"] for ns in spec["linux"]["namespaces"]}
    assert ("network" in types) is has_netns
    assert {"pid", "ipc", "uts", "mount"} <= types


def test_unknown_network(rootfs: Path) -> None:
    with pytest.raises(RuntimeSpecError, match="Unknown network 'bridge'"):
        config(rootfs, network="bridge")


def test_resources(rootfs: Path) -> None:
    res = config(rootfs, memory=64 * 1024 * 1024, cpus=0.5, pids_limit=50)["linux"]["resources"]
    assert res["memory"] == {"limit": 67108864}
    assert res["cpu"] == {"quota": 50000, "period": 100000}
    assert res["pids"] == {"limit": 50}
    assert "memory" not in config(rootfs)["linux"]["resources"]


def test_tiny_memory_is_refused(rootfs: Path) -> None:
    with pytest.raises(RuntimeSpecError, match="below the 6 MiB minimum"):
        config(rootfs, memory=1024)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(123, 123), ("64m", 64 << 20), ("64MiB", 64 << 20), ("1g", 1 << 30), ("512k", 512 << 10)],
)
def test_parse_size(value, expected) -> None:
    assert rs.parse_size(value) == expected


def test_parse_size_bad() -> None:
    with pytest.raises(RuntimeSpecError, match="Invalid size 'lots'"):
        rs.parse_size("lots")


def test_no_new_privileges_default_on(rootfs: Path) -> None:
    assert config(rootfs)["process"]["noNewPrivileges"] is True
    assert config(rootfs, no_new_privileges=False)["process"]["noNewPrivileges"] is False


def test_hostname_and_annotations(rootfs: Path) -> None:
    spec = config(rootfs, {"StopSignal": "SIGQUIT", "Labels": {"a": "b"}}, hostname="web")
    assert spec["hostname"] == "web"
    assert spec["annotations"] == {"a": "b", rs.STOP_SIGNAL_ANNOTATION: "SIGQUIT"}
    assert "hostname" not in config(rootfs)


def test_whole_image_config_or_its_config_member(rootfs: Path) -> None:
    whole = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["x"]}}
    assert rs.runtime_config_from_image(whole, str(rootfs))["process"]["args"] == ["x"]
    assert rs.runtime_config_from_image({"Cmd": ["y"]}, str(rootfs))["process"]["args"] == ["y"]


# --- executable lookup --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "cwd", "found"),
    [
        (["sh"], "/", "bin/busybox"),
        (["/bin/sh"], "/", "bin/busybox"),
        (["./busybox"], "/bin", "bin/busybox"),
        (["nosuch"], "/", None),
        (["/etc/passwd"], "/", None),  # exists, but is not executable
    ],
)
def test_find_executable(rootfs: Path, args, cwd, found) -> None:
    spec = config(rootfs, command=args, workdir=cwd)
    result = rs.find_executable(str(rootfs), spec)
    assert result == (str(rootfs / found) if found else None)


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"user": "app", "network": "host", "read_only": True, "hostname": "h"},
        {"memory": 64 << 20, "cpus": 1.5, "pids_limit": 10, "cap_drop": ["ALL"]},
        {"mounts": [BindMount("/srv", "/srv", True)], "rlimits": {"core": (0, 0)}},
    ],
)
def test_generated_configs_are_valid(rootfs: Path, opts: dict) -> None:
    spec = config(rootfs, {"Cmd": ["sh"], "StopSignal": "SIGINT"}, **opts)
    rs.validate_runtime_config(spec)
    assert json.loads(json.dumps(spec)) == spec


def test_generated_config_valid_against_shared_schema(rootfs: Path, shared: Path) -> None:
    """Cross-check with the upstream files themselves, not only our embedded copy."""
    referencing = pytest.importorskip("referencing")
    draft4 = pytest.importorskip("referencing.jsonschema").DRAFT4

    schema_dir = shared / "conformance" / "oci-runtime-spec" / "schema"
    registry = referencing.Registry().with_resources(
        (p.name, referencing.Resource.from_contents(json.loads(p.read_text()), draft4))
        for p in schema_dir.glob("*.json")
    )
    schema = json.loads((schema_dir / "config-schema.json").read_text())
    validator = jsonschema.Draft4Validator(schema, registry=registry.crawl())
    spec = config(rootfs, user="app", memory=64 << 20, mounts=[BindMount("/a", "/b")])
    assert list(validator.iter_errors(spec)) == []


def test_invalid_config_is_reported(rootfs: Path) -> None:
    spec = config(rootfs)
    spec["process"]["user"]["uid"] = -1
    spec["mounts"][0]["destination"] = 5
    with pytest.raises(RuntimeSpecError, match="does not match the OCI runtime-spec schema"):
        rs.validate_runtime_config(spec)
    errors = rs.schema_errors(spec)
    assert any(e.startswith("process/user/uid") for e in errors)
    assert any(e.startswith("mounts/0/destination") for e in errors)


def test_validation_cache_marks_only_valid_configs(rootfs: Path, tmp_path: Path) -> None:
    cache = tmp_path / "validated"
    spec = config(rootfs)
    rs.validate_runtime_config(spec, str(cache))
    assert [p.name for p in cache.iterdir()] == [rs.config_fingerprint(spec)]
    bad = config(rootfs)
    bad["process"]["user"]["uid"] = -1
    with pytest.raises(RuntimeSpecError):
        rs.validate_runtime_config(bad, str(cache))
    assert len(list(cache.iterdir())) == 1


def test_validation_cache_trusts_its_marks(rootfs: Path, tmp_path: Path) -> None:
    """A marked config is not validated again (so jsonschema need not even be imported)."""
    bad = config(rootfs)
    bad["process"]["user"]["uid"] = -1
    (tmp_path / rs.config_fingerprint(bad)).touch()
    rs.validate_runtime_config(bad, str(tmp_path))
    other = config(rootfs, hostname="other")
    assert rs.config_fingerprint(other) != rs.config_fingerprint(config(rootfs))


def test_validation_cache_keeps_the_newest_marks(
    rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rs, "VALIDATED_KEEP", 3)
    cache = tmp_path / "validated"
    for number in range(5):
        rs.validate_runtime_config(config(rootfs, hostname=f"h{number}"), str(cache))
    assert len(list(cache.iterdir())) == 3
    assert (cache / rs.config_fingerprint(config(rootfs, hostname="h4"))).exists()


def test_validation_cache_that_cannot_be_written_is_no_error(rootfs: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    rs.validate_runtime_config(config(rootfs), str(blocker / "validated"))
