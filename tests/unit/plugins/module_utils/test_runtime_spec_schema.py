"""The embedded runtime-spec schema: in step with upstream, and right on upstream's fixtures."""

import importlib.util
import json
from pathlib import Path

import pytest

from ansible_collections.lapis.layers.plugins.module_utils import runtime_spec as rs
from ansible_collections.lapis.layers.plugins.module_utils.runtime_spec_schema import SCHEMAS

REPO = Path(__file__).resolve().parents[4]
GENERATED = REPO / "plugins" / "module_utils" / "runtime_spec_schema.py"


def schema_dir(shared: Path) -> Path:
    return shared / "conformance" / "oci-runtime-spec" / "schema"


def fixtures(shared: Path, kind: str, verdict: str) -> list[Path]:
    paths = sorted((schema_dir(shared) / "test" / kind / verdict).glob("*.json"))
    assert paths, f"no {kind}/{verdict} fixtures under {schema_dir(shared)}"
    return paths


def load_generator():
    spec = importlib.util.spec_from_file_location(
        "gen_runtime_spec_schema", REPO / "scripts" / "gen_runtime_spec_schema.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_embedded_copy_matches_upstream_schemas(shared: Path) -> None:
    """Regenerating from ../shared gives exactly the committed module."""
    generator = load_generator()
    assert generator.render(schema_dir(shared)) == GENERATED.read_text(), (
        "plugins/module_utils/runtime_spec_schema.py is stale: "
        "run .venv/bin/python scripts/gen_runtime_spec_schema.py"
    )


def test_embedded_copy_holds_what_config_and_state_need() -> None:
    assert {"config-schema.json", "config-linux.json", "defs.json", "defs-linux.json"} <= set(
        SCHEMAS
    )
    assert "state-schema.json" in SCHEMAS
    assert "features-schema.json" not in SCHEMAS


@pytest.mark.parametrize("kind", ["config", "state"])
def test_good_fixtures_pass(shared: Path, kind: str) -> None:
    for path in fixtures(shared, kind, "good"):
        document = json.loads(path.read_text())
        assert rs.schema_errors(document, f"{kind}-schema.json") == [], path.name


@pytest.mark.parametrize("kind", ["config", "state"])
def test_bad_fixtures_fail(shared: Path, kind: str) -> None:
    for path in fixtures(shared, kind, "bad"):
        try:
            document = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue  # invalid-json.json: unparseable counts as rejected
        assert rs.schema_errors(document, f"{kind}-schema.json"), f"{path.name} was accepted"


def test_validate_runtime_config_on_fixtures(shared: Path) -> None:
    good = json.loads((schema_dir(shared) / "test/config/good/spec-example.json").read_text())
    rs.validate_runtime_config(good)
    bad = json.loads((schema_dir(shared) / "test/config/bad/linux-hugepage.json").read_text())
    with pytest.raises(rs.RuntimeSpecError, match="hugepageLimits"):
        rs.validate_runtime_config(bad)
