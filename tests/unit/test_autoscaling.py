"""Balanced autoscaling: the spec field, each step's replicas from its measured per-replica capacity and arrival
rate, and stabilization windows both ways (pure; the times are passed in)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from conveyor_operator.autoscaler import Autoscaler, recommend, with_replicas
from conveyor_runtime.live import StepFigures
from conveyor_runtime.spec import PipelineSpec, StepSpec
from conveyor_runtime.spec.model import AutoscalingSpec

POLICY = AutoscalingSpec(
    minReplicas=1, maxReplicas=10, targetUtilization=0.5, scaleUpWindowSeconds=30, scaleDownWindowSeconds=120
)


def _figures(arrival: float, completed: float, utilization: float, pods: int = 2, depth: float = 0.0) -> StepFigures:
    return StepFigures(
        name="enc",
        pods=pods,
        instances=pods,
        arrival_items_per_s=arrival,
        completed_items_per_s=completed,
        utilization=utilization,
        queue_depth=depth,
    )


def test_autoscaling_spec_refuses_min_above_max_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="minReplicas .3. must not exceed maxReplicas .2."):
        StepSpec.model_validate({"name": "enc", "op": "identity", "autoscaling": {"minReplicas": 3, "maxReplicas": 2}})


def test_autoscaling_spec_is_off_unless_given() -> None:
    assert StepSpec.model_validate({"name": "enc", "op": "identity"}).autoscaling is None


def test_recommend_sizes_the_step_from_its_capacity_per_replica_and_its_arrival_rate() -> None:
    # 2 pods computed 100 items/s at 80% busy: one replica does 62.5 items/s flat out, 31.25 at the 50% target;
    # 200 items/s arrive -> ceil(200 / 31.25) = 7
    replicas, why = recommend(_figures(arrival=200.0, completed=100.0, utilization=0.8), POLICY) or (0, "")
    assert replicas == 7
    assert why == "200 items/s arrive; one replica computes 62.5 items/s flat out (80% busy over 2 pods); target 50% busy"


def test_recommend_clamps_to_the_policy_bounds() -> None:
    assert recommend(_figures(arrival=10_000.0, completed=100.0, utilization=0.8), POLICY)[0] == 10  # type: ignore[index]
    assert recommend(_figures(arrival=1.0, completed=1.0, utilization=0.01), POLICY)[0] == 1  # type: ignore[index]


def test_recommend_an_idle_step_to_its_minimum_and_nothing_without_pods_or_a_busy_measure() -> None:
    assert recommend(_figures(arrival=0.0, completed=0.0, utilization=0.0), POLICY) == (1, "no items arrive")
    assert recommend(_figures(arrival=5.0, completed=0.0, utilization=0.0), POLICY) is None  # nothing computed yet
    assert recommend(_figures(arrival=5.0, completed=5.0, utilization=0.2, pods=0), POLICY) is None


def test_autoscaler_scales_up_only_once_the_whole_up_window_agrees() -> None:
    scaler = Autoscaler()
    hot = _figures(arrival=200.0, completed=100.0, utilization=0.8)
    assert scaler.decide("ns/p/enc", hot, POLICY, current=2, now=0.0) is None  # one reading is not a trend
    assert scaler.decide("ns/p/enc", hot, POLICY, current=2, now=15.0) is None
    decision = scaler.decide("ns/p/enc", hot, POLICY, current=2, now=30.0)
    assert decision is not None and (decision.replicas, decision.current) == (7, 2)


def test_autoscaler_scales_up_to_the_lowest_and_down_to_the_highest_recommendation_in_the_window() -> None:
    scaler = Autoscaler()
    for now, arrival in [(0.0, 200.0), (15.0, 100.0), (30.0, 200.0)]:
        up = scaler.decide("k", _figures(arrival=arrival, completed=100.0, utilization=0.8), POLICY, current=2, now=now)
    assert up is not None and up.replicas == 4  # ceil(100 / 31.25): the lowest of the window
    down = None
    for now in [45.0, 60.0, 120.0, 149.0]:
        down = scaler.decide("k", _figures(arrival=20.0, completed=20.0, utilization=0.16), POLICY, current=4, now=now)
    assert down is None  # the 200 items/s reading at 30 s is still inside the 120 s down window
    down = scaler.decide("k", _figures(arrival=20.0, completed=20.0, utilization=0.16), POLICY, current=4, now=170.0)
    assert down is not None and down.replicas == 1


def test_autoscaler_never_flaps_on_a_steady_load() -> None:
    scaler = Autoscaler()
    decisions = [
        scaler.decide("k", _figures(arrival=a, completed=a, utilization=a / 62.5 / 3, pods=3), POLICY, current=3, now=t * 15.0)
        for t, a in enumerate([90.0, 80.0, 93.0, 85.0, 91.0, 78.0, 88.0, 92.0])
    ]
    assert decisions == [None] * 8  # 78..93 items/s at 31.25 per replica -> 3 replicas, every time


def test_with_replicas_replaces_only_the_autoscaled_steps_replicas_in_a_copy() -> None:
    body: dict[str, Any] = {"metadata": {"name": "p"}, "spec": {"steps": [{"name": "pre", "op": "identity", "replicas": 1},
                                                          {"name": "enc", "op": "identity", "replicas": 2}]}}  # fmt: skip
    changed = with_replicas(body, {"enc": 5})
    assert changed["spec"]["steps"] == [
        {"name": "pre", "op": "identity", "replicas": 1},
        {"name": "enc", "op": "identity", "replicas": 5},
    ]
    assert body["spec"]["steps"][1]["replicas"] == 2
    PipelineSpec.model_validate(changed["spec"])


def test_with_replicas_sets_the_gateways_replicas_under_its_reserved_name() -> None:
    body: dict[str, Any] = {
        "metadata": {"name": "p"},
        "spec": {"steps": [{"name": "pre", "op": "identity"}], "gateway": {"grpcPort": 9}},
    }
    changed = with_replicas(body, {"gateway": 3})
    assert changed["spec"]["gateway"] == {"grpcPort": 9, "replicas": 3}
    assert "replicas" not in body["spec"]["gateway"]
    assert PipelineSpec.model_validate(changed["spec"]).gateway.replicas == 3


def test_recommend_sizes_the_gateway_from_requests_per_cpu_second() -> None:
    """The gateway as a step: 300 requests/s arrive; one pod answered 150/s at 75% of a core, so a pod serves 200/s
    flat out and three keep it at 50% busy."""
    policy = AutoscalingSpec(minReplicas=1, maxReplicas=6, targetUtilization=0.5)
    gateway = StepFigures(
        name="gateway", pods=1, instances=1, arrival_items_per_s=300, completed_items_per_s=150, utilization=0.75
    )
    found = recommend(gateway, policy)
    assert found is not None and found[0] == 3


def test_controller_autoscales_the_gateway_from_its_figures_like_a_step() -> None:
    """The controller's wiring (no cluster call is made): the gateway's figures and policy give its replicas, under
    the gateway's reserved name, and an Autoscaled event naming the gateway."""
    from conveyor_operator.controller import PipelineController
    from conveyor_runtime.live import PipelineFigures

    controller = PipelineController(cluster=None)  # type: ignore[arg-type]
    controller._clock = lambda: 100.0
    spec = PipelineSpec.model_validate(
        {
            "steps": [{"name": "pre", "op": "identity"}],
            "gateway": {"autoscaling": {"maxReplicas": 4, "targetUtilization": 0.5, "scaleUpWindowSeconds": 0}},
        }
    )
    busy = StepFigures(name="gateway", pods=1, instances=1, arrival_items_per_s=300, completed_items_per_s=150, utilization=0.75)
    figures = PipelineFigures(
        window_s=10, steps=[], throughput_per_s=150, p50_s=None, p99_s=None, errors_per_s={}, bottleneck="",
        bottleneck_reason="", saturated={}, gateway_pods=1, gateway=busy,
    )  # fmt: skip
    pipeline = {"status": {"gateway": {"desired": 1}}}
    replicas, events = controller._autoscale(("ns", "p"), pipeline, spec, figures)
    assert replicas == {"gateway": 3}
    assert [e.message.split(":")[0] for e in events] == ["the gateway"]
