"""The extroot role on a fleet of three simulated routers at once (forks 3)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from ansible_collections.lapis.layers.plugins.module_utils import uci
from ansible_collections.lapis.layers.tests.system.extroot.conftest import (
    ADDRESSES,
    REPO,
    Keys,
    router_env,
    sh,
    write_inventory,
)

PLAYBOOK = REPO / "playbooks/openwrt_extroot.yml"
RECAP_RE = re.compile(
    r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)


def play(inventory: Path, *extra: str) -> dict[str, dict[str, int]]:
    cmd = ["ansible-playbook", "-i", str(inventory), "-f", "3", str(PLAYBOOK), *extra]
    proc = subprocess.run(cmd, env=router_env(), capture_output=True, text=True, check=False)
    recap = {
        host: {"ok": int(ok), "changed": int(ch), "unreachable": int(un), "failed": int(fa)}
        for host, ok, ch, un, fa in RECAP_RE.findall(proc.stdout)
    }
    assert proc.returncode == 0 or recap, f"{proc.stdout}\n{proc.stderr}"
    recap["_output"] = {"stdout": proc.stdout}  # type: ignore[dict-item]
    return recap


def test_role_on_three_routers(
    make_router: Any, client_key: Keys, ssh_cmd: list[str], tmp_path: Path
) -> None:
    routers = [make_router(f"r{i + 1}", address) for i, address in enumerate(ADDRESSES)]
    inventory = write_inventory(tmp_path, routers, client_key)
    vars_ = ["-e", "extroot_device=/dev/sda", "-e", "extroot_format=true"]

    first = play(inventory, *vars_)
    for router in routers:
        # ok: the argument_specs validation, the asserts, the module, the reboot note
        assert first[router.name] == {"ok": 4, "changed": 1, "unreachable": 0, "failed": 0}, first
        fs_uuid = sh("blkid", "-o", "value", "-s", "UUID", router.usb_loop).strip()
        fstab = router.shell(ssh_cmd, "cat /etc/config/fstab")
        section = uci.parse(fstab).find("extroot")
        assert section is not None and section.get("uuid") == fs_uuid
        assert section.get("enabled") == "1" and section.get("target") == "/overlay"
    assert "takes effect at the" in first["_output"]["stdout"]  # type: ignore[operator]

    second = play(inventory, *vars_)
    for router in routers:
        assert second[router.name]["changed"] == 0 and second[router.name]["failed"] == 0, second

    bad = play(inventory, "-e", "extroot_device=sda")
    for router in routers:
        assert bad[router.name]["failed"] == 1, bad
