"""playbooks/site.yml over real SSH to three hosts, forks 3: images and containers roll out.

One module-scoped rollout runs the site three times: release 1, release 2 (one more layer
on top of release 1) and release 2 again. The checks then read the hosts' stores and the
recorded image_copy results. The last two tests read one more run, release 3, during
which one host's sshd (with its sessions) is killed as the images role starts copying: that
host fails alone. Another host starts that run with the chunks an interrupted transfer
leaves behind, and is sent only the rest.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.lapis.layers.plugins.module_utils import containers as ct
from ansible_collections.lapis.layers.plugins.module_utils.image_copy import chunk_name
from ansible_collections.lapis.layers.plugins.module_utils.oci_store import Store
from ansible_collections.lapis.layers.tests.system.conftest import ansible_env
from ansible_collections.lapis.layers.tests.system.fleet.conftest import Fleet

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SITE = REPO / "playbooks" / "site.yml"
IMAGE = "localhost/fleet/app"
CHUNK = 256 << 10  # lapis_images_chunk_size in the fleet's inventory
LOOP = "trap 'exit 0' TERM; while :; do sleep 1; done"


def release_vars(releases: dict[int, dict[str, Any]], release: int) -> dict[str, Any]:
    name = f"{IMAGE}:{release}"
    return {
        "lapis_images_list": [{"name": name, "src": str(releases[release]["path"])}],
        "lapis_containers_list": [
            {"name": "app", "image": name, "command": ["sh", "-c", LOOP], "memory": "64m"}
        ],
    }


def playbook_command(fleet: Fleet, extra: dict[str, Any], tag: str) -> tuple[list[str], dict]:
    extra_file = fleet.workdir / f"vars-{tag}.json"
    extra_file.write_text(json.dumps(extra))
    env = ansible_env()
    env.update(
        ANSIBLE_CALLBACK_PLUGINS=str(HERE / "callback_plugins"),
        ANSIBLE_CALLBACKS_ENABLED="fleet_recorder",
        FLEET_RECORD=str(fleet.workdir / f"record-{tag}.json"),
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_PIPELINING="True",
        ANSIBLE_RETRY_FILES_ENABLED="False",
        PYTHONUNBUFFERED="1",
    )
    cmd = ["ansible-playbook", "-f", "3", "-i", str(fleet.inventory), str(SITE)]
    return [*cmd, "-e", f"@{extra_file}"], env


def run_site(
    fleet: Fleet, extra: dict[str, Any], tag: str, on_line: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the site playbook; returns rc, output and the recorder's copies and stats."""
    cmd, env = playbook_command(fleet, extra, tag)
    lines: list[str] = []
    with subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line)
        rc = proc.wait()
    record_path = Path(env["FLEET_RECORD"])
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    return {"rc": rc, "output": "".join(lines), **record}


def container(fleet: Fleet, host: str) -> dict[str, Any]:
    found: dict[str, Any] = ct.info(str(fleet.hosts[host].store), "app", "auto", 0)[0]
    return found


@pytest.fixture(scope="module")
def rollout(fleet: Fleet, releases: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    runs = {}
    for tag, release in (("first", 1), ("second", 2), ("again", 2)):
        runs[tag] = run_site(fleet, release_vars(releases, release), tag)
        assert runs[tag]["rc"] == 0, runs[tag]["output"][-6000:]
    return runs


def layout_image(layout: Path) -> tuple[str, int]:
    """Manifest digest of a layout's image and the bytes of its config and layer blobs."""
    entry = json.loads((layout / "index.json").read_text())["manifests"][0]
    manifest = json.loads((layout / "blobs" / "sha256" / entry["digest"][7:]).read_bytes())
    return entry["digest"], sum(d["size"] for d in [manifest["config"], *manifest["layers"]])


def test_every_host_has_the_images_and_runs_the_container(
    fleet: Fleet, releases: dict[int, dict[str, Any]], rollout: dict[str, dict[str, Any]]
) -> None:
    first = rollout["first"]
    digest, blob_bytes = layout_image(releases[1]["path"])
    for name, host in fleet.hosts.items():
        (copy,) = first["copies"][name]
        assert copy["bytes_sent"] == blob_bytes, name  # config and layers; the manifest is inline
        assert copy["blobs_skipped"] == [] and copy["digest"] == digest
        assert first["stats"][name]["changed"] > 0 and first["stats"][name]["failures"] == 0
        store = Store(host.store)
        assert store.resolve(f"{IMAGE}:1").manifest_digest == digest
        assert store.resolve(f"{IMAGE}:2").manifest_digest == releases[2]["manifest"]["digest"]
        running = container(fleet, name)
        assert running["status"] == "running", name
        assert running["image"] == f"{IMAGE}:2"
        assert running["image_digest"] == releases[2]["manifest"]["digest"]


def test_a_second_release_sends_each_host_only_its_new_layer(
    fleet: Fleet, releases: dict[int, dict[str, Any]], rollout: dict[str, dict[str, Any]]
) -> None:
    new_layer, new_config = releases[2]["layer"], releases[2]["config"]
    for name in fleet.hosts:
        (copy,) = rollout["second"]["copies"][name]
        assert sorted(copy["blobs_sent"]) == sorted([new_layer["digest"], new_config["digest"]])
        assert copy["bytes_sent"] == new_layer["size"] + new_config["size"], name
        assert copy["bytes_sent"] - new_layer["size"] < 2048  # the image config, nothing else
        assert len(copy["blobs_skipped"]) == 2  # busybox and users layers were there


def test_a_second_run_of_the_site_changes_nothing(
    fleet: Fleet, rollout: dict[str, dict[str, Any]]
) -> None:
    again = rollout["again"]
    for name in fleet.hosts:
        assert again["stats"][name]["changed"] == 0, again["output"][-4000:]
        (copy,) = again["copies"][name]
        assert copy["bytes_sent"] == 0
        assert copy["changed"] is False


@pytest.fixture(scope="module")
def release_3(
    fleet: Fleet, releases: dict[int, dict[str, Any]], rollout: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Release 3 with h4's sshd killed when the images role starts copying.

    Before the run, h2's staging directory gets what a transfer cut short leaves behind:
    the new layer's first chunk complete and its second chunk broken off.
    """
    del rollout  # runs after the first three site runs
    layer = releases[3]["layer"]
    blob = (releases[3]["path"] / "blobs" / "sha256" / layer["digest"][7:]).read_bytes()
    staged = fleet.hosts["h2"].store / "incoming" / layer["digest"][7:]
    staged.mkdir(parents=True)
    (staged / chunk_name(0, CHUNK)).write_bytes(blob[:CHUNK])
    (staged / chunk_name(1, CHUNK)).write_bytes(blob[CHUNK : CHUNK + 1000])

    lost = fleet.hosts["h4"]
    killed: list[str] = []

    def cut_h4(line: str) -> None:
        if not killed and "TASK [lapis.layers.images : Copy" in line:
            lost.stop()  # the sshd and its sessions (ControlPersist masters lose theirs)
            killed.append(line)

    run = run_site(fleet, release_vars(releases, 3), "lost", on_line=cut_h4)
    assert killed, run["output"][-4000:]
    return run


def test_a_host_lost_mid_run_fails_alone(
    fleet: Fleet, release_3: dict[str, Any], releases: dict[int, dict[str, Any]]
) -> None:
    run = release_3
    assert run["rc"] == 4, run["output"][-4000:]  # 4: some host was unreachable
    assert run["stats"]["h4"]["unreachable"] >= 1
    for name in ("h2", "h3"):
        stats = run["stats"][name]
        assert stats["failures"] == 0 and stats["unreachable"] == 0, name
        running = container(fleet, name)
        assert running["status"] == "running" and running["image"] == f"{IMAGE}:3", name
        assert running["image_digest"] == releases[3]["manifest"]["digest"]
    store = Store(fleet.hosts["h4"].store)
    assert store.lookup(f"{IMAGE}:3") is None
    assert container(fleet, "h4")["image"] == f"{IMAGE}:2"  # untouched, still running


def test_a_copy_cut_short_resumes_with_the_missing_chunks(
    fleet: Fleet, release_3: dict[str, Any], releases: dict[int, dict[str, Any]]
) -> None:
    layer, config = releases[3]["layer"], releases[3]["config"]
    assert layer["size"] > CHUNK  # the layer has a second chunk to resume
    (resumed,) = release_3["copies"]["h2"]
    assert resumed["blobs_resumed"] == [layer["digest"]]
    assert resumed["bytes_resumed"] == CHUNK
    assert resumed["bytes_sent"] == layer["size"] - CHUNK + config["size"]
    (fresh,) = release_3["copies"]["h3"]
    assert fresh["bytes_sent"] == layer["size"] + config["size"]
    assert not (fleet.hosts["h2"].store / "incoming" / layer["digest"][7:]).exists()
