"""Live figures of a pipeline from two scrapes of its steps' metrics (pure: the text comes from real StepMetrics)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from conveyor_runtime.live import (
    LiveTracker,
    PodSample,
    Scrape,
    StepCapacity,
    bottleneck,
    gateway_figures,
    histogram_quantile,
    parse_metrics,
    render_report,
    render_table,
    saturated_steps,
    step_figures,
)
from conveyor_runtime.step import StepMetrics


def _traffic(metrics: StepMetrics, batches: int, rows: int, compute_s: float, queue_s: float) -> None:
    for _ in range(batches):
        metrics.batch_sent(rows, "full", [queue_s] * rows)
        metrics.batch_computed(compute_s)
        for _ in range(rows):
            metrics.request_received(1)
            metrics.request_done("OK", queue_s + compute_s)


def _sample(metrics: StepMetrics) -> PodSample:
    return parse_metrics(metrics.text())


def test_step_figures_rates_come_from_the_counter_deltas_between_two_scrapes() -> None:
    metrics = StepMetrics("enc")
    _traffic(metrics, batches=10, rows=4, compute_s=0.02, queue_s=0.001)
    before = _sample(metrics)
    _traffic(metrics, batches=50, rows=4, compute_s=0.02, queue_s=0.001)
    for _ in range(2):  # two refused
        metrics.request_received(1)
        metrics.request_done("RESOURCE_EXHAUSTED", 0.0)
    for _ in range(6):  # six still queued
        metrics.request_received(1)
    metrics.queue_depth.set(6)
    after = _sample(metrics)

    figures = step_figures(
        "enc", {"p1": before}, {"p1": after}, seconds=10.0, capacity=StepCapacity(max_batch_size=8, instances=1)
    )

    assert figures.pods == 1
    assert figures.completed_items_per_s == pytest.approx(20.0)  # 50 batches x 4 rows in 10 s
    assert figures.completed_requests_per_s == pytest.approx(20.0)  # 200 OK answers
    assert figures.arrival_items_per_s == pytest.approx((200 + 2 + 6) / 10)  # computed, refused and queued rows
    assert figures.arrival_requests_per_s == pytest.approx(20.8)  # every request received
    assert figures.errors_per_s == {"RESOURCE_EXHAUSTED": pytest.approx(0.2)}
    assert figures.mean_batch_size == pytest.approx(4.0)
    assert figures.batch_fill == pytest.approx(0.5)
    assert figures.utilization == pytest.approx(0.1)  # 50 x 20 ms busy in 10 s on one instance
    assert figures.queue_depth == 6
    assert figures.compute_p50_s is not None and 0.01 < figures.compute_p50_s <= 0.025
    assert figures.queue_p99_s is not None and 0.0005 < figures.queue_p99_s <= 0.001


def test_step_figures_take_arrivals_from_the_received_counters_when_the_step_has_them() -> None:
    """A step counts what it receives (requests, and rows by the batch dimension) before any check: arrivals are
    then exact, also for a step with no batcher and for rows that expire in the queue or are refused."""
    metrics = StepMetrics("relay")
    before = _sample(metrics)
    for rows in (3, 1, 2, 2):
        metrics.request_received(rows)
    metrics.request_done("OK", 0.001)  # one answered; nothing batched (an op with no batch step)
    after = _sample(metrics)

    figures = step_figures(
        "relay", {"p1": before}, {"p1": after}, seconds=2.0, capacity=StepCapacity(max_batch_size=0, instances=1)
    )

    assert figures.arrival_requests_per_s == pytest.approx(2.0)  # 4 requests in 2 s
    assert figures.arrival_items_per_s == pytest.approx(4.0)  # 8 rows in 2 s
    assert figures.completed_requests_per_s == pytest.approx(0.5)


def test_step_figures_sum_the_pods_and_divide_busy_time_by_every_instance() -> None:
    a, b = StepMetrics("enc"), StepMetrics("enc")
    before = {"a": _sample(a), "b": _sample(b)}
    _traffic(a, batches=100, rows=1, compute_s=0.05, queue_s=0.0)
    _traffic(b, batches=20, rows=1, compute_s=0.05, queue_s=0.0)
    after = {"a": _sample(a), "b": _sample(b)}

    figures = step_figures("enc", before, after, seconds=10.0, capacity=StepCapacity(max_batch_size=0, instances=2))

    assert figures.pods == 2
    assert figures.completed_items_per_s == pytest.approx(12.0)
    assert figures.utilization == pytest.approx(6.0 / (10.0 * 2 * 2))  # 120 x 50 ms over 2 pods x 2 instances
    assert figures.batch_fill is None  # no batching: nothing to fill


def test_step_figures_count_a_restarted_pod_from_zero_and_skip_a_pod_seen_once() -> None:
    old, new, late = StepMetrics("enc"), StepMetrics("enc"), StepMetrics("enc")
    _traffic(old, batches=100, rows=1, compute_s=0.01, queue_s=0.0)
    before = {"p": _sample(old)}
    _traffic(new, batches=30, rows=1, compute_s=0.01, queue_s=0.0)  # the same pod restarted: counters began again
    _traffic(late, batches=500, rows=1, compute_s=0.01, queue_s=0.0)

    figures = step_figures(
        "enc",
        before,
        {"p": _sample(new), "late": _sample(late)},
        seconds=10.0,
        capacity=StepCapacity(max_batch_size=0, instances=1),
    )

    assert figures.pods == 1
    assert figures.completed_items_per_s == pytest.approx(3.0)


def test_step_figures_of_an_idle_step_have_no_latency_and_no_utilization_claim() -> None:
    metrics = StepMetrics("enc")
    sample = _sample(metrics)
    figures = step_figures(
        "enc", {"p": sample}, {"p": sample}, seconds=10.0, capacity=StepCapacity(max_batch_size=8, instances=1)
    )
    assert figures.completed_items_per_s == 0.0
    assert figures.queue_p99_s is None and figures.compute_p50_s is None and figures.mean_batch_size is None
    assert figures.utilization == 0.0


def test_histogram_quantile_interpolates_within_the_bucket_like_prometheus() -> None:
    buckets = ((0.1, 0.0), (0.2, 10.0), (0.4, 20.0), (float("inf"), 20.0))
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.2)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.3)
    assert histogram_quantile(0.5, ((0.1, 0.0), (float("inf"), 0.0))) is None
    assert histogram_quantile(0.99, ((0.1, 0.0), (float("inf"), 5.0))) == pytest.approx(0.1)  # beyond the last bound


def test_bottleneck_is_the_busiest_step_and_says_why() -> None:
    metrics = {name: StepMetrics(name) for name in ("pre", "enc")}
    before = {name: {"p": _sample(m)} for name, m in metrics.items()}
    _traffic(metrics["pre"], batches=100, rows=1, compute_s=0.01, queue_s=0.0)
    _traffic(metrics["enc"], batches=100, rows=1, compute_s=0.08, queue_s=0.0)
    capacity = StepCapacity(max_batch_size=0, instances=1)
    figures = [step_figures(n, before[n], {"p": _sample(m)}, seconds=10.0, capacity=capacity) for n, m in metrics.items()]

    name, reason = bottleneck(figures)

    assert name == "enc"
    assert reason.startswith("enc: 80% busy")


def test_bottleneck_is_empty_while_no_step_computed_anything() -> None:
    metrics = StepMetrics("enc")
    sample = {"p": _sample(metrics)}
    figures = [step_figures("enc", sample, sample, seconds=10.0, capacity=StepCapacity(max_batch_size=0, instances=1))]
    assert bottleneck(figures) == ("", "no step computed anything in the last window")


def test_saturated_steps_name_a_step_whose_queue_keeps_growing_or_that_refuses_requests() -> None:
    history = {"pre": [0.0, 3.0, 1.0, 2.0], "enc": [4.0, 9.0, 15.0, 30.0], "post": [0.0, 0.0, 0.0, 0.0]}
    rejecting = {"post": 1.5}

    found = saturated_steps(history, rejecting, windows=3)

    assert found == {
        "enc": "step 'enc': its queue grew in each of the last 3 windows (4 -> 30 rows)",
        "post": "step 'post': refuses 1.5 requests/s (RESOURCE_EXHAUSTED: its queue is full)",
    }


def test_saturated_steps_need_enough_windows_to_call_a_queue_growing() -> None:
    assert saturated_steps({"enc": [1.0, 2.0, 3.0]}, {}, windows=3) == {}


def test_render_table_lists_each_step_and_the_bottleneck() -> None:
    metrics = StepMetrics("enc")
    before = {"p": _sample(metrics)}
    _traffic(metrics, batches=10, rows=4, compute_s=0.02, queue_s=0.001)
    figures = [
        step_figures("enc", before, {"p": _sample(metrics)}, seconds=2.0, capacity=StepCapacity(max_batch_size=8, instances=1))
    ]

    lines = render_table(figures).splitlines()

    assert lines[0].split() == [
        "STEP", "PODS", "IN/s", "OUT/s", "REQ/s", "QUEUE", "WAIT-P50", "WAIT-P99", "RUN-P50", "RUN-P99", "BATCH", "FILL", "BUSY", "ERR/s"
    ]  # fmt: skip
    assert lines[1].split()[:6] == ["enc", "1", "20", "20", "20", "0"]
    assert lines[-1] == "bottleneck: enc: 10% busy (1 model instance(s) over 1 pod(s)); queue 0 rows"


def _gateway_traffic(registry_metrics: StepMetrics, requests: int, seconds: float) -> None:
    for _ in range(requests):
        registry_metrics.request_done("OK", seconds)


def test_live_tracker_reports_nothing_until_it_has_two_scrapes_then_the_pipeline_figures() -> None:
    enc = StepMetrics("enc")
    gateway = StepMetrics("gateway")  # the same series shape as the gateway's: requests by code and a latency histogram
    tracker = LiveTracker({"enc": StepCapacity(max_batch_size=0, instances=1)})

    assert tracker.update(Scrape(at=100.0, steps={"enc": {"p": _sample(enc)}}, gateway={"g": _sample(gateway)})) is None
    _traffic(enc, batches=50, rows=1, compute_s=0.1, queue_s=0.0)
    _gateway_traffic(gateway, 50, 0.3)
    live = tracker.update(Scrape(at=110.0, steps={"enc": {"p": _sample(enc)}}, gateway={"g": _sample(gateway)}))

    assert live is not None
    assert live.window_s == 10.0
    assert live.throughput_per_s == pytest.approx(5.0)
    assert live.p99_s is not None and 0.25 < live.p99_s <= 0.5
    assert [f.name for f in live.steps] == ["enc"]
    assert live.bottleneck == "enc"
    assert live.saturated == {}


def test_live_tracker_calls_a_step_saturated_once_its_queue_grew_for_three_windows() -> None:
    enc = StepMetrics("enc")
    tracker = LiveTracker({"enc": StepCapacity(max_batch_size=0, instances=1)}, windows=3)
    found = []
    for at, depth in enumerate([0, 5, 10, 20]):
        enc.queue_depth.set(depth)
        live = tracker.update(Scrape(at=float(at * 10), steps={"enc": {"p": _sample(enc)}}, gateway={}))
        found.append(None if live is None else live.saturated)
    assert found[:3] == [None, {}, {}]
    assert found[3] == {"enc": "step 'enc': its queue grew in each of the last 3 windows (0 -> 20 rows)"}


def test_render_report_says_when_the_gateway_was_not_read() -> None:
    enc = StepMetrics("enc")
    tracker = LiveTracker({"enc": StepCapacity(max_batch_size=0, instances=1)})
    tracker.update(Scrape(at=0.0, steps={"enc": {"p": _sample(enc)}}))
    live = tracker.update(Scrape(at=5.0, steps={"enc": {"p": _sample(enc)}}))
    assert live is not None and live.gateway_pods == 0

    head = render_report("demo", live).splitlines()[0]

    assert head == "pipeline demo over 5.0s: gateway metrics not read (start `conveyor run` with --metrics-port 0)"


def test_step_figures_derive_arrivals_from_what_was_done_when_a_pod_lacks_the_received_counters() -> None:
    """A pod of an older step (no received counters): arrivals are its answers and computed rows plus queue growth."""
    metrics = StepMetrics("enc")
    before = _sample(metrics)
    _traffic(metrics, batches=5, rows=2, compute_s=0.01, queue_s=0.001)
    metrics.queue_depth.set(4)
    after = _sample(metrics)
    old = {"p1": replace(before, received=None, received_rows=None)}
    new = {"p1": replace(after, received=None, received_rows=None)}

    figures = step_figures("enc", old, new, seconds=1.0, capacity=StepCapacity(max_batch_size=8, instances=1))

    assert figures.arrival_items_per_s == pytest.approx(10 + 4)
    assert figures.arrival_requests_per_s == pytest.approx(10)


def test_gateway_figures_are_requests_in_and_answered_and_cpu_busy_share_per_pod() -> None:
    before = {"g1": PodSample(requests={"OK": 100.0}, cpu_seconds=10.0), "g2": PodSample(requests={"OK": 50.0}, cpu_seconds=4.0)}
    after = {
        "g1": PodSample(requests={"OK": 300.0, "UNAVAILABLE": 20.0}, cpu_seconds=11.5),
        "g2": PodSample(requests={"OK": 230.0}, cpu_seconds=4.5),
        "g3": PodSample(requests={"OK": 5.0}, cpu_seconds=0.1),  # new: read once, counts for nothing yet
    }
    figures = gateway_figures(before, after, seconds=2.0)
    assert (figures.name, figures.pods, figures.instances) == ("gateway", 2, 2)
    assert figures.arrival_requests_per_s == pytest.approx((200 + 20 + 180) / 2)
    assert figures.completed_requests_per_s == pytest.approx((200 + 180) / 2)
    assert figures.utilization == pytest.approx((1.5 + 0.5) / (2.0 * 2))


def test_step_utilization_counts_a_batch_computed_alone_as_holding_every_instance() -> None:
    metrics = StepMetrics("classify")
    before = _sample(metrics)
    for _ in range(10):  # idle step: each batch alone on all its threads, 0.5 s each
        metrics.batch_sent(1, "idle", [0.0])
        metrics.batch_computed(0.5, instances=2)
    capacity = StepCapacity(max_batch_size=8, instances=2)
    figures = step_figures("classify", {"p": before}, {"p": _sample(metrics)}, seconds=10.0, capacity=capacity)
    assert figures.utilization == pytest.approx(0.5)  # 5 s of both instances in 10 s, not 5 s of one
    assert figures.compute_p50_s is not None and figures.compute_p50_s <= 0.5
    older = PodSample(compute=_sample(metrics).compute)  # a step without the busy counter: its compute time
    figures = step_figures("classify", {"p": PodSample()}, {"p": older}, seconds=10.0, capacity=capacity)
    assert figures.utilization == pytest.approx(0.25)
