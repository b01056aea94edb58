"""Which nodes each cell's image goes to (distribution.targets): pure, no Docker, no Ray."""

from __future__ import annotations

from runner.distribution import registry_ref, targets
from runner.scheduler import Node, request_shape
from tests.test_scheduler import cell


def _plan(cells, counts, nodes, held=None, src=None):  # type: ignore[no-untyped-def]
    requests = {c.id: request_shape(c) for c in cells}
    return targets(requests, counts, nodes, held or {}, src or {})


def test_a_cell_goes_to_at_most_one_node_per_shard_spread_by_load() -> None:
    nodes = [Node("h", 1), Node("w1", 1), Node("w2", 1)]
    plan = _plan([cell("a"), cell("b")], {"a": 1, "b": 2}, nodes)
    assert len(plan.targets["a"]) == 1
    assert len(plan.targets["b"]) == 2
    assert not set(plan.targets["a"]) & set(plan.targets["b"])  # the least loaded nodes first
    assert plan.ready == {"a": set(), "b": set()}


def test_nodes_holding_the_image_come_first_and_are_ready_at_once() -> None:
    nodes = [Node("h", 1), Node("w1", 1), Node("w2", 1)]
    c = cell("a")
    env = request_shape(c).image.tag
    plan = _plan([c], {"a": 2}, nodes, held={"w2": frozenset({"src:1"}), "w1": frozenset({env})}, src={"a": "src:1"})
    assert plan.targets["a"] == ["w2", "w1"]
    assert plan.ready["a"] == {"w2"}


def test_labelled_and_engine_less_nodes_are_respected() -> None:
    nodes = [Node("h", 4), Node("lab", 1, labels=frozenset({"lab"})), Node("mac", 4, docker=False)]
    plan = _plan([cell("l", runs_on="lab"), cell("any")], {"l": 3, "any": 3}, nodes)
    assert plan.targets["l"] == ["lab"]
    assert "mac" not in plan.targets["any"]


def test_registry_refs_keep_the_content_tag() -> None:
    assert registry_ref("127.0.0.1:5000/ci/", "matrix-run/env:abc") == "127.0.0.1:5000/ci/env:abc"
