"""Live figures of a step that runs in another step's processes (`inProcessWith`): read from its host's pods, from
the series labelled with its own name, and never counted in the host's figures."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from conveyor_operator.autoscaler import Autoscaler
from conveyor_operator.controller import PipelineController
from conveyor_operator.live import LiveSampler, live_status, saturated_condition
from conveyor_operator.reconciler import Outcome
from conveyor_operator.scrape import step_samples
from conveyor_operator.status import PipelineStatus, StepStatus
from conveyor_runtime.live import PipelineFigures, StepFigures, parse_metrics
from conveyor_runtime.spec import PipelineSpec
from conveyor_runtime.spec.model import AutoscalingSpec

NOW = "2026-11-22T19:00:00Z"
SPEC = PipelineSpec.model_validate(
    {
        "steps": [
            {"name": "pre", "op": "identity", "inProcessWith": "cls"},
            {"name": "cls", "op": "identity", "replicas": 2},
            {"name": "post", "op": "identity"},
        ]
    }
)


def _page(answered: Mapping[str, int], computing: Mapping[str, float] | None = None, *, cpu: float = 0.0) -> str:
    """A step pod's /metrics page: `answered[step]` requests answered OK (and rows received), each step's compute
    seconds, and an unlabelled process series."""
    registry = CollectorRegistry()
    requests = Counter("conveyor_step_requests", "answered", ["step", "code"], registry=registry)
    received = Counter("conveyor_step_received", "received", ["step"], registry=registry)
    rows = Counter("conveyor_step_received_rows", "rows", ["step"], registry=registry)
    compute = Histogram("conveyor_step_compute_seconds", "compute", ["step"], buckets=(0.01, 0.1, 1.0), registry=registry)
    depth = Gauge("conveyor_step_queue_depth", "depth", ["step"], registry=registry)
    Counter("process_cpu_seconds", "cpu", registry=registry).inc(cpu)
    for step, count in answered.items():
        requests.labels(step, "OK").inc(count)
        received.labels(step).inc(count)
        rows.labels(step).inc(count)
        depth.labels(step).set(0)
        seconds = (computing or {}).get(step, 0.0)
        for _ in range(count):
            compute.labels(step).observe(seconds / count if count else 0.0)
    return generate_latest(registry).decode()


def _pod(name: str, step: str | None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/component": "step" if step else "gateway"}
    if step:
        labels["conveyor.dev/step"] = step
    return {
        "metadata": {"name": name, "labels": labels, "annotations": {"prometheus.io/port": "9090"}},
        "status": {"phase": "Running", "podIP": f"10.0.0.{len(name)}"},
    }


class _Pods:
    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return self.pods


def _sample_twice(pages: list[dict[str, str]]) -> PipelineFigures:
    pods = _Pods([_pod("demo-cls-a", "cls"), _pod("demo-post-a", "post")])
    reads = iter(pages)
    clock = itertools.count(0.0, 5.0)  # each read at two clock ticks: 5 s between the reads' times

    def fetch(urls: Mapping[str, str]) -> dict[str, str]:
        read = next(reads)
        return {pod: read[pod] for pod in urls}

    sampler = LiveSampler(pods, interval_s=0, fetch=fetch, clock=lambda: next(clock))
    assert sampler.sample("ns", "demo", SPEC) is None
    figures = sampler.sample("ns", "demo", SPEC)
    assert figures is not None
    return figures


def test_live_in_process_guest_figures_come_from_its_hosts_pods_and_its_own_series() -> None:
    figures = _sample_twice(
        [
            {"demo-cls-a": _page({"cls": 0, "pre": 0}), "demo-post-a": _page({"post": 0})},
            {"demo-cls-a": _page({"cls": 10, "pre": 40}), "demo-post-a": _page({"post": 10})},
        ]
    )
    steps = {f.name: f for f in figures.steps}
    assert [f.name for f in figures.steps] == ["pre", "cls", "post"]
    assert steps["pre"].pods == 1 and steps["pre"].completed_requests_per_s == 40 / 10
    assert steps["cls"].pods == 1 and steps["cls"].completed_requests_per_s == 10 / 10
    assert steps["post"].completed_requests_per_s == 10 / 10


def test_live_in_process_bottleneck_can_be_a_guest_and_says_where_it_runs() -> None:
    figures = _sample_twice(
        [
            {"demo-cls-a": _page({"cls": 0, "pre": 0}), "demo-post-a": _page({"post": 0})},
            {"demo-cls-a": _page({"cls": 10, "pre": 10}, {"cls": 0.5, "pre": 8.0}), "demo-post-a": _page({"post": 10})},
        ]
    )
    assert figures.bottleneck == "pre"
    hosts = {"pre": "cls"}
    live = live_status(figures, now=NOW, hosts=hosts)
    assert live.bottleneck == "pre"
    assert live.bottleneckReason.startswith("pre: ") and "runs in the pods of step 'cls'" in live.bottleneckReason
    assert "runs in the pods" not in live_status(figures, now=NOW).bottleneckReason


def test_live_in_process_step_samples_split_one_page_by_step() -> None:
    text = _page({"cls": 3, "pre": 5}, cpu=7.0)
    samples = step_samples(text, "cls", ["pre"])
    assert set(samples) == {"cls", "pre"}
    assert samples["cls"].requests == {"OK": 3.0} and samples["cls"].received == 3.0
    assert samples["pre"].requests == {"OK": 5.0} and samples["pre"].received == 5.0
    assert samples["cls"].cpu_seconds == 7.0  # the process's own (unlabelled) series stay the host's


def test_live_in_process_step_samples_of_a_step_without_guests_are_its_whole_page() -> None:
    text = _page({"post": 4})
    assert step_samples(text, "post", []) == {"post": parse_metrics(text)}


def test_live_in_process_step_samples_leave_out_a_step_the_pod_no_longer_hosts() -> None:
    """A step just made standalone again still runs in the host's old pods for a while: not the host's figures."""
    assert step_samples(_page({"cls": 3, "pre": 5}), "cls", []) == {"cls": parse_metrics(_page({"cls": 3}))}


def test_live_in_process_saturated_guest_names_the_step_to_scale() -> None:
    figures = PipelineFigures(
        window_s=10,
        steps=[],
        throughput_per_s=0,
        p50_s=None,
        p99_s=None,
        errors_per_s={},
        bottleneck="",
        bottleneck_reason="",
        saturated={"pre": "step 'pre': its queue grew in each of the last 3 windows (1 -> 9 rows)"},
    )
    condition = saturated_condition(figures, now=NOW, generation=1, previous=[], hosts={"pre": "cls"})
    assert condition.status == "True"
    assert "step 'pre': its queue grew" in condition.message
    assert "runs in the pods of step 'cls'" in condition.message


def test_live_in_process_controller_passes_the_hosts_from_the_status_steps() -> None:
    controller = PipelineController(_Pods([]), live_interval_s=0)  # type: ignore[arg-type]
    pipeline = {"metadata": {"name": "demo", "namespace": "ns"}, "spec": SPEC.model_dump(mode="json", exclude_unset=True)}
    status = PipelineStatus(
        observedGeneration=1,
        steps=[
            StepStatus(name="pre", deployment="demo-cls", inProcessWith="cls"),
            StepStatus(name="cls", deployment="demo-cls"),
        ],
    )
    busy = StepFigures(name="pre", pods=1, instances=1, utilization=0.9, completed_items_per_s=9.0)
    figures = PipelineFigures(
        window_s=10,
        steps=[busy, StepFigures(name="cls", pods=1, instances=1)],
        throughput_per_s=0,
        p50_s=None,
        p99_s=None,
        errors_per_s={},
        bottleneck="pre",
        bottleneck_reason="pre: 90% busy",
        saturated={"pre": "step 'pre': refuses"},
    )
    live, saturated, _ = controller._live(pipeline, Outcome(status=status), figures)
    assert live is not None and "runs in the pods of step 'cls'" in live["bottleneckReason"]
    assert saturated is not None and "runs in the pods of step 'cls'" in saturated.message


def _figures(name: str, arrival: float, completed: float, utilization: float) -> StepFigures:
    return StepFigures(
        name=name,
        pods=2,
        instances=1,
        arrival_items_per_s=arrival,
        completed_items_per_s=completed,
        utilization=utilization,
    )


def test_live_in_process_a_hosts_autoscaling_sizes_for_its_busiest_guest() -> None:
    """A host's replicas are its guests' too: it gets what the most demanding of them needs."""
    policy = AutoscalingSpec(minReplicas=1, maxReplicas=10, targetUtilization=0.5, scaleUpWindowSeconds=0)
    host = _figures("cls", arrival=10, completed=10, utilization=0.1)  # 50 items/s per replica flat out
    guest = _figures("pre", arrival=40, completed=10, utilization=0.5)  # 10 items/s per replica flat out
    alone = Autoscaler().decide("ns/demo/cls", host, policy, current=2, now=0.0)
    assert alone is None or alone.replicas <= 2
    decision = Autoscaler().decide("ns/demo/cls", host, policy, current=2, now=0.0, guests=[guest])
    assert decision is not None and (decision.step, decision.replicas) == ("cls", 8)  # 40/s at 50% of 10/s
    assert "step 'pre'" in decision.reason
