"""Containers on the real kernel with real runc and conmon.

The module interface (ad-hoc ``ansible``: detached container outliving the task, exit codes,
failures) is exercised through ``run_module``; the other behaviour calls the same engine
in-process (``containers.ensure``), which is what the module's ``main()`` does, to keep the
suite fast.
"""

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.lapis.layers.plugins.module_utils import containers as ct
from ansible_collections.lapis.layers.plugins.module_utils import runtime_spec as rs

from .conftest import IMAGE, TRAP_LOOP, import_layout, load_layout_module, make_layout

MODULE = "lapis.layers.container"
INFO = "lapis.layers.container_info"


def runc_ids(store: Path) -> list[str]:
    proc = subprocess.run(
        ["runc", "--root", str(store / "containers" / ".runtime"), "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [item["id"] for item in json.loads(proc.stdout or "null") or []]


def mounts_under(path: Path) -> list[str]:
    proc = subprocess.run(
        ["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True, check=True
    )
    return [line for line in proc.stdout.splitlines() if line.startswith(str(path))]


def failed(result: dict) -> bool:
    """Whether the ad-hoc task failed (the tree callback's file has no ``failed`` key)."""
    return result["_ansible_rc"] != 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def ensure(store: Path, **kw: Any) -> dict[str, Any]:
    """Run the engine in-process, as the module's main() does."""
    engine_keys = {"runtime", "monitor", "stop_timeout", "keep_upper", "recreate"}
    engine = {k: kw.pop(k) for k in list(kw) if k in engine_keys}
    for key in ("command", "entrypoint"):
        if key in kw:
            kw[key] = rs.split_command(kw[key], key)
    request = ct.ContainerRequest(
        name=kw.pop("name", "job"),
        state=kw.pop("state", "run"),
        image=kw.pop("image", IMAGE),
        options=rs.ContainerOptions(**kw),
        **engine,
    )
    return ct.ensure(request, str(store), ct.StoreImages(str(store)))


def leftovers(store: Path) -> list[str]:
    root = store / "containers"
    names = [p.name for p in root.iterdir() if not p.name.startswith(".")] if root.exists() else []
    return names + mounts_under(store) + runc_ids(store)


# --- through the module ---------------------------------------------------------------------


def test_module_run_output_and_exit_codes(run_module, store, busybox) -> None:
    args = {"name": "job", "state": "run", "image": busybox, "store": str(store)}
    ok = run_module(MODULE, command="sh -c 'echo out; echo err >&2; hostname'", **args)
    assert not failed(ok), ok
    assert ok["changed"] is True
    assert (ok["rc"], ok["stdout"], ok["stderr"]) == (0, "out\njob\n", "err\n")
    assert (ok["container"]["status"], ok["container"]["exit_code"]) == ("exited", 0)

    tolerated = run_module(
        MODULE, command="sh -c 'echo partial; exit 3'", fail_on_error=False, **args
    )
    assert not failed(tolerated), tolerated
    assert (tolerated["rc"], tolerated["stdout"]) == (3, "partial\n")

    five = run_module(MODULE, command=["sh", "-c", "exit 5"], **args)
    assert failed(five), five
    assert five["rc"] == 5
    assert "exited with code 5" in five["msg"]
    assert mounts_under(store) == []
    assert runc_ids(store) == []


def test_module_detached_container_outlives_the_task(run_module, store, busybox) -> None:
    args = {
        "name": "svc",
        "image": busybox,
        "store": str(store),
        "command": ["sh", "-c", TRAP_LOOP],
    }
    check = run_module(MODULE, check=True, **args)
    assert (check["changed"], check["actions"]) == (True, ["prepare", "start"])
    assert not (store / "containers" / "svc").exists()

    started = run_module(MODULE, **args)
    assert started["changed"] is True, started
    pid = started["container"]["pid"]

    # The task is over; the container still runs, and container_info lists it.
    assert alive(pid)
    (entry,) = run_module(INFO, store=str(store))["containers"]
    assert (entry["name"], entry["status"], entry["pid"]) == ("svc", "running", pid)
    assert (entry["image"], entry["monitor"]) == (IMAGE, "conmon")

    again = run_module(MODULE, **args)
    assert (again["changed"], again["container"]["pid"]) == (False, pid)

    stopped = run_module(MODULE, **{**args, "state": "stopped"})
    assert stopped["changed"] is True
    assert (stopped["container"]["status"], stopped["container"]["exit_code"]) == ("exited", 7)
    assert not alive(pid)
    assert runc_ids(store) == []
    assert mounts_under(store) == []

    removed = run_module(MODULE, name="svc", store=str(store), state="absent")
    assert removed["changed"] is True
    assert leftovers(store) == []


def test_module_unknown_image_fails_cleanly(run_module, store, busybox) -> None:
    args = {"name": "bad", "store": str(store), "image": "localhost/nothing:here"}
    check = run_module(MODULE, check=True, **args)
    after_check = leftovers(store)
    result = run_module(MODULE, **args)

    # Check mode plans it, with a warning: an earlier task of the play could bring the image.
    assert not failed(check), check
    assert (check["changed"], check["actions"]) == (True, ["prepare", "start"]), check
    assert after_check == []
    assert failed(result), result
    assert "Unknown image localhost/nothing:here" in result["msg"]
    assert leftovers(store) == []


# --- the engine: run to completion ----------------------------------------------------------


def test_user_env_workdir_resolved_from_image_files(store, busybox) -> None:
    result = ensure(
        store,
        command="sh -c 'id; echo $GREETING $HOME; pwd'",
        user="app",
        env={"GREETING": "hi"},
        workdir="/tmp",
    )
    assert result["rc"] == 0, result
    assert result["stdout"].splitlines() == [
        "uid=1000(app) gid=1000(app) groups=100(users)",
        "hi /home/app",
        "/tmp",
    ]


def test_read_only_rootfs_refuses_writes(store, busybox, tmp_path) -> None:
    rw_dir = tmp_path / "rw"
    rw_dir.mkdir()
    result = ensure(
        store,
        command="sh -c 'touch /x; echo rc=$?; touch /data/y && echo data-ok'",
        read_only=True,
        mounts=[rs.BindMount(str(rw_dir), "/data")],
    )
    assert "rc=1" in result["stdout"], result
    assert "Read-only file system" in result["stderr"]
    assert "data-ok" in result["stdout"]
    assert (rw_dir / "y").exists()


def test_read_only_bind_mount(store, busybox, tmp_path) -> None:
    ro_dir = tmp_path / "ro"
    ro_dir.mkdir()
    (ro_dir / "hello").write_text("from the host\n")
    result = ensure(
        store,
        command="sh -c 'cat /ro/hello; touch /ro/z'",
        mounts=[rs.BindMount(str(ro_dir), "/ro", read_only=True)],
    )
    assert result["stdout"] == "from the host\n"
    assert result["rc"] != 0
    assert "Read-only file system" in result["stderr"]
    assert not (ro_dir / "z").exists()


def test_network_none_has_only_loopback(store, busybox) -> None:
    result = ensure(store, command="ip -o link show")
    assert result["rc"] == 0, result
    names = [line.split(":")[1].strip() for line in result["stdout"].splitlines()]
    assert names == ["lo"]


def test_network_host_sees_the_host_interfaces(store, busybox) -> None:
    result = ensure(store, command="ip -o link show", network="host")
    names = {line.split(":")[1].strip().split("@")[0] for line in result["stdout"].splitlines()}
    host = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    host_names = {line.split(":")[1].strip().split("@")[0] for line in host.stdout.splitlines()}
    assert names == host_names


def test_memory_limit_is_applied(store, busybox) -> None:
    script = (
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || "
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
    )
    result = ensure(store, command=["sh", "-c", script], memory=48 << 20, pids_limit=20)
    assert result["rc"] == 0, result
    assert result["stdout"].strip() == str(48 << 20)


def test_rlimits_and_capabilities(store, busybox) -> None:
    script = "grep -E 'open files|core file' /proc/self/limits; grep CapEff /proc/self/status"
    result = ensure(
        store,
        command=["sh", "-c", script],
        rlimits={"NOFILE": (256, 512), "CORE": (0, 0)},
        cap_drop=["ALL"],
        cap_add=["KILL"],
    )
    assert result["rc"] == 0, result
    lines = result["stdout"].splitlines()
    assert next(line for line in lines if "open files" in line).split()[-3:-1] == ["256", "512"]
    assert next(line for line in lines if "core file" in line).split()[-3:-1] == ["0", "0"]
    cap_eff = next(line.split()[1] for line in lines if line.startswith("CapEff"))
    assert int(cap_eff, 16) == 1 << 5  # CAP_KILL only


def test_image_stop_signal_and_reaper_monitor(store, tmp_path) -> None:
    """An image whose StopSignal is SIGUSR1, under the reaper instead of conmon."""
    image = "localhost/lapis-test/usr1:1"
    import_layout(store, image, make_layout(tmp_path / "usr1", "--stop-signal", "SIGUSR1"))
    script = "trap 'echo got-usr1; exit 9' USR1; echo up; while :; do sleep 0.1; done"
    args = {"name": "usr1", "image": image, "command": ["sh", "-c", script], "monitor": "reaper"}
    started = ensure(store, state="started", **args)
    pid = started["container"]["pid"]
    assert (started["container"]["monitor"], alive(pid)) == ("reaper", True)
    assert ensure(store, state="started", **args)["changed"] is False

    stopped = ensure(store, state="stopped", stop_timeout=30, **args)
    assert stopped["container"]["exit_code"] == 9  # SIGUSR1 trapped, not SIGKILLed
    (entry,) = ct.info(str(store), "usr1", "auto", 5)
    assert entry["log_lines"] == ["up", "got-usr1"]
    assert ensure(store, name="usr1", state="absent", image=None)["changed"] is True
    assert leftovers(store) == []


def test_stop_timeout_escalates_to_sigkill(store, busybox) -> None:
    # Busybox sh as pid 1 ignores SIGTERM without a trap, so only SIGKILL ends it.
    args = {"name": "stubborn", "command": "sh -c 'while :; do sleep 0.1; done'"}
    pid = ensure(store, state="started", **args)["container"]["pid"]
    stopped = ensure(store, state="stopped", stop_timeout=1, **args)
    assert stopped["container"]["exit_code"] == 137
    assert not alive(pid)


# --- the engine: idempotence, recreate, diff ------------------------------------------------


def test_restart_keeps_upper_and_recreate_on_change(store, busybox) -> None:
    args = {
        "name": "app",
        "command": ["sh", "-c", "echo state > /marker; " + TRAP_LOOP],
        "stop_timeout": 5,
    }
    first = ensure(store, state="started", **args)
    upper = store / "containers" / "app" / "upper"
    assert (upper / "marker").exists()

    changed = ensure(store, state="started", env={"MODE": "two"}, **args)
    assert changed["changed"] is True
    assert changed["changed_fields"] == ["env"]
    assert changed["diff"]["before"]["env"] == {}
    assert changed["diff"]["after"]["env"] == {"MODE": "two"}
    assert changed["actions"] == ["remove", "prepare", "start"]
    assert changed["container"]["pid"] != first["container"]["pid"]
    assert not alive(first["container"]["pid"])
    assert runc_ids(store) == ["app"]

    stopped = ensure(store, state="stopped", env={"MODE": "two"}, **args)
    assert stopped["actions"] == ["stop"]
    restarted = ensure(store, state="started", env={"MODE": "two"}, **args)
    assert restarted["actions"] == ["start"]
    assert (upper / "marker").exists()  # the same upperdir came back
    ensure(store, name="app", state="absent", image=None, keep_upper=True)
    assert (upper / "marker").exists()
    assert mounts_under(store) == []
    assert runc_ids(store) == []


def test_name_used_by_another_image_needs_recreate(store, busybox, tmp_path) -> None:
    other = "localhost/lapis-test/other:1"
    import_layout(store, other, make_layout(tmp_path / "other", "--cmd", '["true"]'))
    args = {"name": "shared", "state": "started", "command": ["sh", "-c", TRAP_LOOP]}
    ensure(store, image=IMAGE, **args)
    with pytest.raises(ct.ContainerError, match="runs image localhost/lapis-test/busybox:1"):
        ensure(store, image=other, **args)
    assert runc_ids(store) == ["shared"]
    replaced = ensure(store, image=other, recreate=True, **args)
    assert replaced["container"]["image"] == other
    assert "image" in replaced["changed_fields"]


def test_chain_ids_claimed_for_garbage_collection(store, busybox) -> None:
    result = ensure(store, name="claim", state="stopped")
    claim = store / "containers" / "claim" / "chain-ids"
    assert claim.read_text().split() == result["container"]["chain_ids"]
    assert len(result["container"]["chain_ids"]) == 2
    ensure(store, name="claim", state="absent", image=None)
    assert not claim.exists()


# --- errors that leave nothing behind -------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"runtime": "/nonexistent/runc"}, "Runtime /nonexistent/runc does not exist"),
        ({"entrypoint": "/usr/bin/nginx"}, "'/usr/bin/nginx' does not exist in image"),
        ({"user": "postgres"}, "'postgres' is not in the image's /etc/passwd"),
        ({"cap_add": ["SYS_MAGIC"]}, "Unknown capability 'SYS_MAGIC'"),
        ({"name": "../etc"}, "Invalid container name"),
    ],
)
def test_bad_input_fails_cleanly(store, busybox, args, message) -> None:
    with pytest.raises((ct.ContainerError, rs.RuntimeSpecError), match=message):
        ensure(store, **{"name": "bad", "command": "true", **args})
    assert leftovers(store) == []


def test_layout_writer_refuses_a_dynamic_busybox(tmp_path) -> None:
    layout = load_layout_module()
    assert layout.dynamic_interpreter(Path("/bin/busybox")) is None
    with pytest.raises(SystemExit, match="linked dynamically"):
        layout.main([str(tmp_path / "layout"), "--busybox", "/bin/ls"])
    assert not (tmp_path / "layout" / "index.json").exists()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"user": "app", "network": "host", "read_only": True, "memory": 32 << 20, "cpus": 0.5},
        {"cap_drop": ["ALL"], "cap_add": ["NET_BIND_SERVICE"], "pids_limit": 10},
    ],
)
def test_written_config_valid_against_shared_schemas(store, busybox, shared, options) -> None:
    """The bundle's config.json, as the module wrote it, against upstream's schema files."""
    referencing = pytest.importorskip("referencing")
    draft4 = pytest.importorskip("referencing.jsonschema").DRAFT4
    jsonschema = pytest.importorskip("jsonschema")
    schema_dir = shared / "conformance" / "oci-runtime-spec" / "schema"
    if not schema_dir.is_dir():
        pytest.skip(f"{schema_dir} is missing")
    registry = referencing.Registry().with_resources(
        (p.name, referencing.Resource.from_contents(json.loads(p.read_text()), draft4))
        for p in schema_dir.glob("*.json")
    )
    schema = json.loads((schema_dir / "config-schema.json").read_text())
    validator = jsonschema.Draft4Validator(schema, registry=registry.crawl())
    ensure(store, name="valid", state="stopped", command="true", **options)
    written = json.loads((store / "containers" / "valid" / "config.json").read_text())
    assert [e.message for e in validator.iter_errors(written)] == []
    assert written["process"]["noNewPrivileges"] is True
    ensure(store, name="valid", state="absent", image=None)
