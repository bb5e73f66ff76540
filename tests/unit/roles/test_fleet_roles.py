"""roles/host, images, containers: variables defined once, named and tagged FQCN tasks.

Each role's ``defaults/main.yml`` must agree with its ``meta/argument_specs.yml``, every
variable carries the role's prefix, and the options the roles pass on exist in the modules
with the same types.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
ROLES = {"host": "lapis_host_", "images": "lapis_images_", "containers": "lapis_containers_"}


def load(role: str, path: str) -> Any:
    return yaml.safe_load((REPO / "roles" / role / path).read_text())


def specs(role: str) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = load(role, "meta/argument_specs.yml")["argument_specs"][
        "main"
    ]["options"]
    return options


def module_spec(name: str) -> dict[str, Any]:
    path = REPO / "plugins" / "modules" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"lapis_test_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found: dict[str, Any] = module.ARGUMENT_SPEC
    return found


@pytest.mark.parametrize("role", sorted(ROLES))
def test_defaults_agree_with_the_argument_specs(role: str) -> None:
    defaults = load(role, "defaults/main.yml")
    options = specs(role)
    assert set(defaults) == set(options), role
    for name, spec in options.items():
        assert spec["default"] == defaults[name], f"{role}: {name}"
        assert spec.get("description"), f"{role}: {name} has no description"
        assert spec.get("type"), f"{role}: {name} has no type"


@pytest.mark.parametrize("role", sorted(ROLES))
def test_variables_carry_the_role_prefix(role: str) -> None:
    assert all(name.startswith(ROLES[role]) for name in specs(role)), role
    private = load(role, "vars/main.yml") if (REPO / "roles" / role / "vars").exists() else {}
    assert all(name.startswith(f"__{ROLES[role]}") for name in private or {}), role


@pytest.mark.parametrize("role", sorted(ROLES))
def test_tasks_are_named_tagged_and_use_fqcns(role: str) -> None:
    tasks = load(role, "tasks/main.yml")
    assert tasks[0]["name"].startswith("Preflight"), role
    for task in tasks:
        assert task.get("name"), task
        tags = task.get("tags") or []
        assert ROLES[role].rstrip("_") in tags, task["name"]
        assert any(t.startswith(ROLES[role]) for t in tags), task["name"]
        action = next(k for k in task if "." in k)
        assert action.count(".") >= 2, f"{task['name']}: use the FQCN"
        if "register" in task:
            assert task["register"].startswith(f"__{ROLES[role]}"), task["name"]


def _task(role: str, action: str, name_start: str) -> dict[str, Any]:
    return next(
        t for t in load(role, "tasks/main.yml") if action in t and t["name"].startswith(name_start)
    )


def test_images_role_passes_only_image_copy_options() -> None:
    options = module_spec("image_copy")
    task = _task("images", "lapis.layers.image_copy", "Copy")
    assert set(task["lapis.layers.image_copy"]) <= set(options)
    item = specs("images")["lapis_images_list"]["options"]
    assert set(item["source"]["choices"]) == {*options["source"]["choices"], "registry"}


def test_container_items_match_the_container_module() -> None:
    options = module_spec("container")
    item = specs("containers")["lapis_containers_list"]["options"]
    task = _task("containers", "lapis.layers.container", "Apply")
    passed = set(task["lapis.layers.container"])
    for name, spec in item.items():
        assert name in options, name
        assert spec["type"] == options[name]["type"], name
        assert name in passed, f"{name} is documented but not passed to the module"
        if "choices" in spec:
            assert set(spec["choices"]) <= set(options[name]["choices"]), name
    assert passed <= set(options)


def test_site_playbook_wires_the_roles_for_servers_and_routers() -> None:
    plays = yaml.safe_load((REPO / "playbooks" / "site.yml").read_text())
    roles = {play["hosts"]: [r["role"] for r in play["roles"]] for play in plays}
    assert roles == {
        "servers": ["lapis.layers.host", "lapis.layers.images", "lapis.layers.containers"],
        "routers": ["lapis.layers.extroot"],
    }


def documented_options(module: str) -> set[str]:
    """Option names of a module: its DOCUMENTATION plus its documentation fragments."""
    path = REPO / "plugins" / "modules" / f"{module}.py"
    spec = importlib.util.spec_from_file_location(f"lapis_doc_{module}", path)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    doc = yaml.safe_load(loaded.DOCUMENTATION)
    names = set(doc.get("options") or {})
    for fragment in doc.get("extends_documentation_fragment") or []:
        fragment_file = REPO / "plugins" / "doc_fragments" / f"{fragment.split('.')[-1]}.py"
        text = fragment_file.read_text().split('DOCUMENTATION = r"""', 1)[1].split('"""')[0]
        names |= set(yaml.safe_load(text).get("options") or {})
    return names


def test_images_role_pulls_and_removes_with_options_the_image_module_has() -> None:
    options = documented_options("image")
    for start in ("Pull", "Remove", "Prune | remove"):
        task = _task("images", "lapis.layers.image", start)
        assert set(task["lapis.layers.image"]) <= options, start
