"""roles/extroot: defaults/main.yml agrees with meta/argument_specs.yml, and with the module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ansible_collections.lapis.layers.plugins.module_utils.extroot import ARGUMENT_SPEC

ROLE = Path(__file__).resolve().parents[3] / "roles" / "extroot"
# Module defaults the role replaces with "" (meaning: not set) or its own choice.
ROLE_ONLY_DEFAULTS = {"device": "", "uuid": "", "label": "extroot"}


def load(path: str) -> Any:
    return yaml.safe_load((ROLE / path).read_text())


def specs() -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = load("meta/argument_specs.yml")["argument_specs"]["main"][
        "options"
    ]
    return options


def test_every_default_is_specified_and_every_spec_has_its_default() -> None:
    defaults = load("defaults/main.yml")
    assert set(defaults) == set(specs())
    for name, spec in specs().items():
        assert spec["default"] == defaults[name], name
        assert spec.get("description"), f"{name} has no description"


def test_variables_are_role_prefixed_and_map_to_module_options() -> None:
    for name, spec in specs().items():
        assert name.startswith("extroot_"), name
        option = name.removeprefix("extroot_")
        assert option in ARGUMENT_SPEC, f"{name} maps to no module option"
        module = ARGUMENT_SPEC[option]
        assert spec["type"] == module["type"], name
        assert spec.get("choices") == module.get("choices"), name
        assert spec["default"] == ROLE_ONLY_DEFAULTS.get(option, module.get("default")), name
    assert {f"extroot_{o}" for o in ARGUMENT_SPEC} == set(specs())


def test_tasks_pass_every_variable_to_the_module() -> None:
    tasks = load("tasks/main.yml")
    module_task = next(t for t in tasks if "lapis.layers.extroot" in t)
    assert set(module_task["lapis.layers.extroot"]) == set(ARGUMENT_SPEC)
    for task in tasks:
        assert task.get("name"), task
        assert task.get("tags"), task["name"]
        action = next(k for k in task if "." in k)
        assert action.count(".") >= 2, f"{task['name']}: use the FQCN"
