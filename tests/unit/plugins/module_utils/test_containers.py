"""Unit tests for the container planner and the runtime driver's parsers."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils import containers as ct
from ansible_collections.lapis.layers.plugins.module_utils import oci_runtime as rt
from ansible_collections.lapis.layers.plugins.module_utils import runtime_spec as rs

DIGEST = "sha256:" + "a" * 64


def request(state: str = "started", **options) -> ct.ContainerRequest:
    return ct.ContainerRequest(
        name="web", state=state, image="busybox", options=rs.ContainerOptions(**options)
    )


def desired(req: ct.ContainerRequest, reference: str = "busybox", digest: str = DIGEST) -> dict:
    return ct.desired_record(req, reference, digest)


def current(status: str | None, recorded: dict | None = None, exit_code=None) -> ct.Current:
    """A container that is absent (None), prepared, exited, or in a runtime status."""
    if status is None:
        return ct.Current(False, {}, None, False, None)
    meta = {"desired": recorded or {}, "image": (recorded or {}).get("image")}
    if status == "exited":
        meta["started"] = "2026-01-01T00:00:00Z"
        return ct.Current(True, meta, None, False, exit_code)
    if status == "prepared":
        return ct.Current(True, meta, None, False, None)
    if status == "ended":  # the process ended by itself; runtime state still there
        state = rt.RuntimeState("web", "stopped", 0, "/b")
        meta["started"] = "2026-01-01T00:00:00Z"
        return ct.Current(True, meta, state, True, 0)
    pid = 1  # pid 1 is always alive, so "running" stays running
    return ct.Current(True, meta, rt.RuntimeState("web", status, pid, "/b"), True, None)


# --- plan ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "status", "actions"),
    [
        ("started", None, ["prepare", "start"]),
        ("started", "running", []),
        ("started", "exited", ["start"]),
        ("started", "ended", ["cleanup", "start"]),
        ("started", "prepared", ["start"]),
        ("stopped", None, ["prepare"]),
        ("stopped", "running", ["stop"]),
        ("stopped", "paused", ["stop"]),
        ("stopped", "exited", []),
        ("stopped", "ended", ["cleanup"]),
        ("absent", None, []),
        ("absent", "running", ["remove"]),
        ("absent", "exited", ["remove"]),
        ("run", None, ["prepare", "run"]),
        ("run", "exited", ["remove", "prepare", "run"]),
    ],
)
def test_plan_matching_configuration(state, status, actions) -> None:
    req = request(state)
    want = desired(req)
    the_plan = ct.plan(req, current(status, want), None if state == "absent" else want)
    assert the_plan.actions == actions
    assert the_plan.changed is bool(actions)


@pytest.mark.parametrize("state", ["started", "stopped"])
def test_plan_changed_option_recreates_and_names_fields(state) -> None:
    old = desired(request(memory=64 << 20))
    req = request(state, memory=128 << 20, env={"A": "1"})
    the_plan = ct.plan(req, current("running", old), desired(req))
    expected = ["remove", "prepare", "start"] if state == "started" else ["remove", "prepare"]
    assert the_plan.actions == expected
    assert the_plan.changed_fields == ["env", "memory"]
    assert the_plan.before["memory"] == 64 << 20
    assert the_plan.after["memory"] == 128 << 20


@pytest.mark.parametrize("state", ["started", "stopped", "run"])
def test_plan_new_container_names_every_field(state) -> None:
    req = request(state)
    the_plan = ct.plan(req, current(None), desired(req))
    assert the_plan.changed_fields == sorted(desired(req))
    assert the_plan.before == {}


def test_plan_matching_container_names_no_field() -> None:
    req = request()
    the_plan = ct.plan(req, current("running", desired(req)), desired(req))
    assert the_plan.changed_fields == []


def test_plan_new_image_digest_recreates() -> None:
    req = request()
    the_plan = ct.plan(
        req, current("running", desired(req)), desired(req, digest="sha256:" + "b" * 64)
    )
    assert the_plan.changed_fields == ["image_digest"]
    assert the_plan.actions == ["remove", "prepare", "start"]


def test_plan_other_image_needs_recreate() -> None:
    req = request()
    old = desired(req, reference="docker.io/library/nginx:latest")
    with pytest.raises(ct.ContainerError, match=r"runs image docker\.io/library/nginx:latest"):
        ct.plan(req, current("running", old), desired(req))
    req.recreate = True
    assert ct.plan(req, current("running", old), desired(req)).actions[0] == "remove"


def test_desired_record_normalizes_capabilities() -> None:
    one = desired(request(cap_add=["net_admin", "CAP_KILL"]))
    two = desired(request(cap_add=["KILL", "NET_ADMIN"]))
    assert one == two
    assert one["cap_add"] == ["CAP_KILL", "CAP_NET_ADMIN"]


def test_changed_fields() -> None:
    assert ct.changed_fields({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == ["b", "c"]


# --- names, paths, overlay options, mountinfo ------------------------------------------------


@pytest.mark.parametrize("name", ["web", "a.b-c_d", "9lives", "x" * 64])
def test_good_names(name) -> None:
    ct.check_name(name)


@pytest.mark.parametrize("name", ["", "../etc", ".hidden", "a/b", "x" * 65, "sp ace", "-x"])
def test_bad_names_path_traversal_and_hidden(name) -> None:
    with pytest.raises(ct.ContainerError, match="Invalid container name"):
        ct.check_name(name)


def test_overlay_options_escape_colons() -> None:
    options = ct.overlay_options(["/l/a:b", "/l/c"], Path("/u"), Path("/w"))
    assert options == "lowerdir=/l/a\\:b:/l/c,upperdir=/u,workdir=/w"


def test_overlay_options_refuse_commas() -> None:
    with pytest.raises(ct.ContainerError, match="contains a comma"):
        ct.overlay_options(["/l/a,b"], Path("/u"), Path("/w"))


def test_unescape_mount_path() -> None:
    assert ct.unescape_mount_path("/a\\040b\\011c") == "/a b\tc"


def test_is_mounted_sees_the_root() -> None:
    assert ct.is_mounted(Path("/"))
    assert not ct.is_mounted(Path("/nonexistent/surely"))


def test_overlay_options_past_one_page_are_left_to_mount8(monkeypatch) -> None:
    """mount(2) would cut them at a page; mount(8) of newer util-linux takes them whole."""

    class NoCall:
        def mount(self, *args: object) -> int:
            raise AssertionError("mount(2) called with options longer than a page")

    monkeypatch.setattr(ct, "_libc", NoCall)
    options = "lowerdir=" + ":".join(f"/layers/{i:04}/diff" for i in range(300))
    assert not ct._mount_overlay(options, Path("/nonexistent/rootfs"))


def test_unmount_of_a_path_that_is_no_mount_point_fails_for_the_fallback(tmp_path) -> None:
    assert not ct._unmount(tmp_path)


def test_without_a_c_library_mounting_falls_back_to_the_commands(monkeypatch) -> None:
    monkeypatch.setattr(ct, "_libc", lambda: None)
    assert not ct._mount_overlay("lowerdir=/l,upperdir=/u,workdir=/w", Path("/r"))
    assert not ct._unmount(Path("/r"))


def test_paths_layout(tmp_path) -> None:
    paths = ct.ContainerPaths(str(tmp_path), "web")
    assert paths.dir == tmp_path / "containers" / "web"
    assert paths.exit_file == paths.dir / "exit" / "web"
    assert paths.runtime_root == tmp_path / "containers" / ".runtime"
    assert paths.lock_file.parent.name == ".locks"


def test_list_names_skips_runtime_and_incomplete(tmp_path) -> None:
    root = tmp_path / "containers"
    for name in ("b", "a", ".runtime", "claim-only"):
        (root / name).mkdir(parents=True)
    for name in ("a", "b", ".runtime"):
        (root / name / "container.json").write_text("{}")
    assert ct.list_names(str(tmp_path)) == ["a", "b"]


# --- logs ---------------------------------------------------------------------------------

K8S_LOG = """\
2026-01-01T00:00:00.1+00:00 stdout F first
2026-01-01T00:00:00.2+00:00 stderr P part one,
2026-01-01T00:00:00.3+00:00 stderr F  part two
2026-01-01T00:00:00.4+00:00 stdout F last
"""


def test_log_tail_strips_conmon_prefixes(tmp_path) -> None:
    paths = ct.ContainerPaths(str(tmp_path), "web")
    paths.dir.mkdir(parents=True)
    paths.log.write_text(K8S_LOG)
    assert ct.log_tail(paths, 10, "conmon") == ["first", "part one, part two", "last"]
    assert ct.log_tail(paths, 1, "conmon") == ["last"]
    assert ct.log_tail(paths, 0, "conmon") == []
    paths.log.write_text("plain\nlines\n")
    assert ct.log_tail(paths, 10, "reaper") == ["plain", "lines"]


def test_log_tail_missing_log(tmp_path) -> None:
    assert ct.log_tail(ct.ContainerPaths(str(tmp_path), "web"), 5, None) == []


# --- runtime driver -----------------------------------------------------------------------

RUNC_STATE = """{
  "ociVersion": "1.0.2-dev",
  "id": "web",
  "pid": 4242,
  "status": "running",
  "bundle": "/var/lib/lapis/containers/web",
  "rootfs": "/var/lib/lapis/containers/web/rootfs",
  "created": "2026-12-03T20:10:56.010718288Z",
  "owner": ""
}"""


def test_parse_runc_state() -> None:
    state = rt.parse_state(RUNC_STATE)
    assert (state.id, state.status, state.pid) == ("web", "running", 4242)
    assert state.bundle == "/var/lib/lapis/containers/web"


@pytest.mark.parametrize("text", ["not json", "[]", '{"id": "x"}'])
def test_parse_state_rejects_garbage(text) -> None:
    with pytest.raises(rt.OCIRuntimeError):
        rt.parse_state(text)


@pytest.mark.parametrize(
    ("value", "number"),
    [("SIGTERM", signal.SIGTERM), ("term", signal.SIGTERM), ("9", 9), (15, 15), ("SIGUSR1", 10)],
)
def test_signal_number(value, number) -> None:
    assert rt.signal_number(value) == number


def test_unknown_signal() -> None:
    with pytest.raises(rt.OCIRuntimeError, match="Unknown signal 'SIGNOPE'"):
        rt.signal_number("SIGNOPE")


def test_find_runtime_by_path_and_missing(tmp_path) -> None:
    with pytest.raises(rt.OCIRuntimeError, match="does not exist or is not executable"):
        rt.find_runtime(str(tmp_path / "runc"))
    with pytest.raises(rt.OCIRuntimeError, match="is not on PATH"):
        rt.find_runtime("no-such-runtime-here")
    fake = tmp_path / "myruntime"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert rt.find_runtime(str(fake)) == str(fake)


def test_state_of_an_unknown_container_runs_no_runtime(tmp_path) -> None:
    """Without ``<root>/<id>`` the runtime does not know the container: no process is run."""
    runtime = rt.OCIRuntime("/nonexistent/runc", str(tmp_path))
    assert runtime.state("web") is None


def test_runtime_command_line() -> None:
    runtime = rt.OCIRuntime("/usr/sbin/runc", "/store/containers/.runtime")
    assert runtime.command("state", "web") == [
        "/usr/sbin/runc",
        "--root",
        "/store/containers/.runtime",
        "state",
        "web",
    ]


def test_conmon_command_passes_runtime_root() -> None:
    runtime = rt.OCIRuntime("/usr/sbin/runc", "/r")
    paths = rt.DetachedPaths("/b", "/b/pid", "/b/mpid", "/b/log", "/b/exit")
    cmd = rt.conmon_command(runtime, "/usr/bin/conmon", "web", paths)
    assert cmd[0] == "/usr/bin/conmon"
    joined = " ".join(cmd)
    assert "--runtime-arg --root --runtime-arg /r" in joined
    assert "--log-path k8s-file:/b/log" in joined
    assert "--exit-dir /b/exit" in joined


def test_process_alive() -> None:
    assert rt.process_alive(1)
    assert not rt.process_alive(0)
    assert not rt.process_alive(2**22 + 1)
