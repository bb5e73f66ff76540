"""Unit tests for the lean-GC action (the container and image_build action plugins):
Ansible's normal action, with the collector's settings changed for the task only."""

from __future__ import annotations

import gc

import pytest

from ansible_collections.lapis.layers.plugins.action import container, image_build
from ansible_collections.lapis.layers.plugins.plugin_utils import lean_gc as action


@pytest.fixture
def plugin(monkeypatch):
    """The action, with Ansible's normal action replaced by one that records the collector."""
    seen: list[tuple[int, int]] = []

    def normal_run(self, tmp=None, task_vars=None):
        seen.append((gc.get_freeze_count(), gc.get_threshold()[0]))
        if task_vars and task_vars.get("fail"):
            raise RuntimeError("module failed")
        return {"changed": True}

    monkeypatch.setattr(action.NormalActionModule, "run", normal_run)
    plugin = object.__new__(action.LeanGcAction)  # run() needs no task or connection here
    plugin.seen = seen
    return plugin


def test_the_task_runs_with_objects_frozen_and_fewer_young_collections(plugin) -> None:
    thresholds = gc.get_threshold()
    assert plugin.run(task_vars={}) == {"changed": True}
    frozen, young = plugin.seen[0]
    assert frozen > 0
    assert young == max(thresholds[0], action.YOUNG_THRESHOLD)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == thresholds


def test_the_collector_is_restored_when_the_task_fails(plugin) -> None:
    thresholds = gc.get_threshold()
    with pytest.raises(RuntimeError, match="module failed"):
        plugin.run(task_vars={"fail": True})
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == thresholds


def test_a_permanent_generation_someone_else_made_is_left_alone(plugin) -> None:
    thresholds = gc.get_threshold()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        plugin.run(task_vars={})
        assert plugin.seen[0] == (frozen, thresholds[0])
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_container_and_image_build_use_the_lean_action() -> None:
    assert issubclass(container.ActionModule, action.LeanGcAction)
    assert issubclass(image_build.ActionModule, action.LeanGcAction)
