"""The execution plan and the tensor routing rule."""

from __future__ import annotations

import pytest

from conveyor_runtime.errors import StepFailed
from conveyor_runtime.spec import ExecutionPlan, route_inputs
from tests.support.pipeline_fixtures import manifest


def test_graph_chain_defaults_inputs_to_the_previous_step() -> None:
    plan = ExecutionPlan.from_manifest(manifest("p", [{"name": n, "op": "identity"} for n in ("a", "b", "c")]))
    assert plan.order == ("a", "b", "c") and plan.entry == "a" and plan.output == "c"
    assert plan.nodes["b"].inputs == ("a",) and plan.nodes["b"].consumers == ("c",)
    assert plan.is_chain


def test_graph_diamond_orders_joins_after_all_inputs_and_is_not_a_chain() -> None:
    steps = [
        {"name": "src", "op": "identity"},
        {"name": "right", "op": "identity", "inputs": ["src"]},
        {"name": "left", "op": "identity", "inputs": ["src"]},
        {"name": "join", "op": "identity", "inputs": ["left", "right"]},
    ]
    plan = ExecutionPlan.from_manifest(manifest("p", steps))
    assert plan.order.index("join") > max(plan.order.index("left"), plan.order.index("right"))
    assert not plan.is_chain and set(plan.nodes["src"].consumers) == {"left", "right"}


def test_graph_leaves_out_steps_that_do_not_reach_the_output() -> None:
    steps = [
        {"name": "a", "op": "identity"},
        {"name": "b", "op": "identity"},
        {"name": "side", "op": "identity", "inputs": ["a"]},
    ]
    plan = ExecutionPlan.from_manifest(manifest("p", steps, output="b"))
    assert plan.order == ("a", "b") and plan.output == "b"


def test_graph_chain_after_follows_single_edges_and_stops_at_fan_outs_and_joins() -> None:
    chain = ExecutionPlan.from_manifest(manifest("p", [{"name": n, "op": "identity"} for n in ("a", "b", "c")]))
    assert chain.chain_after("a") == ("b", "c") and chain.chain_after("b") == ("c",) and chain.chain_after("c") == ()
    assert chain.chain_heads() == ["a"]
    steps = [  # a fans out to b and d; b -> c is a chain; d joins a and c, then e follows d
        {"name": "a", "op": "identity"},
        {"name": "b", "op": "identity"},
        {"name": "c", "op": "identity"},
        {"name": "d", "op": "identity", "inputs": ["a", "c"]},
        {"name": "e", "op": "identity"},
    ]
    dag = ExecutionPlan.from_manifest(manifest("p", steps))
    assert dag.chain_after("a") == ()  # a fan-out ends a chain
    assert dag.chain_after("b") == ("c",)  # c's consumer d is a join: the chain ends at c
    assert dag.chain_after("d") == ("e",)
    assert dag.chain_heads() == ["a", "b", "d"]


def test_graph_route_renames_a_single_tensor_to_the_single_input() -> None:
    assert route_inputs("s", [("up", {"logits": 1})], ["scores"]) == {"scores": 1}


def test_graph_route_passes_all_tensors_by_name_and_drops_unwanted_ones() -> None:
    routed = route_inputs("join", [("l", {"a": 1, "extra": 9}), ("r", {"b": 2})], ["a", "b"])
    assert routed == {"a": 1, "b": 2}
    assert route_inputs("join", [("l", {"a": 1}), ("r", {"b": 2})], None) == {"a": 1, "b": 2}


def test_graph_route_rejects_the_same_tensor_name_from_two_steps() -> None:
    with pytest.raises(StepFailed, match="comes from both 'l' and 'r'"):
        route_inputs("join", [("l", {"x": 1}), ("r", {"x": 2})], ["x", "y"])
