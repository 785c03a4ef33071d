"""The operator's live status: pod metrics URLs, the status.live block, when it is worth a write, the Saturated
condition and how they join the reconcile's status patch."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from conveyor_operator.controller import PipelineController, status_changes
from conveyor_operator.live import live_changed, live_status, pod_metrics_url, saturated_condition
from conveyor_operator.reconciler import Outcome
from conveyor_operator.status import Condition, PipelineStatus
from conveyor_runtime.live import PipelineFigures, StepFigures
from conveyor_runtime.spec import PipelineSpec

NOW = "2026-11-22T19:00:00Z"


def _pod(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "demo-enc-1", "annotations": {"prometheus.io/port": "9191", "prometheus.io/path": "/metrics"}},
        "status": {"phase": "Running", "podIP": "10.244.0.7", **status},
    }


def test_pod_metrics_url_uses_the_pod_ip_and_its_prometheus_port_annotation() -> None:
    assert pod_metrics_url(_pod()) == "http://10.244.0.7:9191/metrics"
    assert pod_metrics_url(_pod(podIP="fd00::7")) == "http://[fd00::7]:9191/metrics"


@pytest.mark.parametrize("status", [{"phase": "Pending"}, {"podIP": ""}, {"phase": "Succeeded"}])
def test_pod_metrics_url_is_none_for_a_pod_that_does_not_run(status: dict[str, Any]) -> None:
    assert pod_metrics_url(_pod(**status)) is None


def test_pod_metrics_url_is_none_for_a_pod_being_deleted() -> None:
    pod = _pod()
    pod["metadata"]["deletionTimestamp"] = NOW
    assert pod_metrics_url(pod) is None


def _figures(throughput: float = 812.4, bottleneck: str = "enc", utilization: float = 0.934) -> PipelineFigures:
    step = StepFigures(
        name="enc",
        pods=2,
        instances=2,
        arrival_items_per_s=812.44,
        arrival_requests_per_s=101.5,
        completed_items_per_s=810.01,
        completed_requests_per_s=101.26,
        queue_p50_s=0.00123,
        queue_p99_s=0.0456,
        compute_p50_s=0.0203,
        compute_p99_s=0.0487,
        mean_batch_size=7.93,
        batch_fill=0.991,
        utilization=utilization,
        queue_depth=12.0,
        errors_per_s={"RESOURCE_EXHAUSTED": 0.25},
    )
    return PipelineFigures(
        window_s=15.02,
        steps=[step],
        throughput_per_s=throughput,
        p50_s=0.0312,
        p99_s=0.0811,
        errors_per_s={},
        bottleneck=bottleneck,
        bottleneck_reason=f"{bottleneck}: 93% busy (2 model instance(s) over 2 pod(s)); queue 12 rows",
        saturated={},
    )


def test_live_status_rounds_the_figures_and_formats_the_columns() -> None:
    live = live_status(_figures(), now=NOW).model_dump(mode="json", exclude_none=True)
    assert (live["throughput"], live["p99"], live["bottleneck"]) == ("812/s", "81ms", "enc")
    assert live["sampledAt"] == NOW and live["windowSeconds"] == 15.0
    [step] = live["steps"]
    assert step == {
        "name": "enc",
        "pods": 2,
        "arrivalItemsPerSecond": 812.0,
        "arrivalRequestsPerSecond": 102.0,
        "completedItemsPerSecond": 810.0,
        "completedRequestsPerSecond": 101.0,
        "queueP50Ms": 1.23,
        "queueP99Ms": 45.6,
        "computeP50Ms": 20.3,
        "computeP99Ms": 48.7,
        "meanBatchSize": 7.93,
        "batchFill": 0.99,
        "utilization": 0.93,
        "queueDepth": 12,
        "errorsPerSecond": {"RESOURCE_EXHAUSTED": 0.25},
    }


def test_live_status_keeps_a_lightly_used_steps_utilization_above_zero() -> None:
    # a top-k step at 20 requests/s per instance, 0.18 ms each: busy 0.36% of the time, which is not idle
    [step] = live_status(_figures(utilization=0.0036), now=NOW).model_dump(mode="json")["steps"]
    assert step["utilization"] == 0.0036
    [step] = live_status(_figures(utilization=0.934), now=NOW).model_dump(mode="json")["steps"]
    assert step["utilization"] == 0.93


def test_live_changed_ignores_small_moves_but_sees_a_new_bottleneck_or_a_stale_sample() -> None:
    old = live_status(_figures(), now=NOW).model_dump(mode="json")
    assert not live_changed(old, live_status(_figures(throughput=840.0), now=NOW).model_dump(mode="json"), age_s=20)
    assert live_changed(old, live_status(_figures(throughput=990.0), now=NOW).model_dump(mode="json"), age_s=20)
    assert live_changed(old, live_status(_figures(bottleneck="pre"), now=NOW).model_dump(mode="json"), age_s=20)
    assert live_changed(old, live_status(_figures(throughput=840.0), now=NOW).model_dump(mode="json"), age_s=300)
    assert live_changed(None, old, age_s=0)


def test_saturated_condition_names_each_saturated_step_and_keeps_its_transition_time() -> None:
    figures = _figures()
    calm = saturated_condition(figures, now=NOW, generation=3, previous=[])
    assert (calm.status, calm.reason) == ("False", "AsExpected")
    grew = "step 'enc': its queue grew in each of the last 3 windows (4 -> 30 rows)"
    hot = dataclasses.replace(figures, saturated={"enc": grew})
    first = saturated_condition(hot, now=NOW, generation=3, previous=[calm.model_dump()])
    assert (first.status, first.reason, first.message) == ("True", "StepSaturated", f"{grew}; add replicas to it or send less")
    again = saturated_condition(hot, now="2026-11-22T19:05:00Z", generation=3, previous=[first.model_dump()])
    assert again.lastTransitionTime == NOW


def test_status_changes_keep_the_live_block_and_the_saturated_condition_a_reconcile_does_not_compute() -> None:
    ready = Condition(type="Ready", status="True", reason="AllStepsReady", lastTransitionTime=NOW)
    saturated = {"type": "Saturated", "status": "True", "reason": "StepSaturated", "message": "m", "lastTransitionTime": NOW,
                 "observedGeneration": 1}  # fmt: skip
    live = live_status(_figures(), now=NOW).model_dump(mode="json")
    current = {"observedGeneration": 1, "live": live, "conditions": [ready.model_dump(mode="json"), saturated]}
    outcome = Outcome(status=PipelineStatus(observedGeneration=1, conditions=[ready]))

    changes = status_changes(outcome, current)

    assert "live" not in changes and "conditions" not in changes


class _NoPods:
    """The API as a pipeline whose pods have not started: listing its pods finds none."""

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return []


def test_controller_leaves_live_status_alone_while_no_step_pod_answers() -> None:
    controller = PipelineController(_NoPods(), live_interval_s=0)  # type: ignore[arg-type]
    pipeline = {"metadata": {"name": "demo", "namespace": "ns"}, "spec": {"steps": [{"name": "enc", "op": "identity"}]}}
    outcome = Outcome(status=PipelineStatus(observedGeneration=1))

    spec = PipelineSpec.model_validate(pipeline["spec"])
    reads = [controller._live(pipeline, outcome, controller.live.sample("ns", "demo", spec)) for _ in range(3)]

    assert reads == [(None, None, [])] * 3
