"""Per-step live figures from two scrapes of its pods (pure): rates, latency quantiles, batch fill, utilization,
the bottleneck and the steps that are saturated. The operator writes them into status; `conveyor status` prints them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..spec import StepSpec
from .samples import Buckets, HistogramSample, PodSample

__all__ = ["REJECTED_CODE", "StepCapacity", "StepFigures", "bottleneck", "histogram_quantile", "saturated_steps", "step_figures"]

#: The code a step answers when its queue is full.
REJECTED_CODE = "RESOURCE_EXHAUSTED"


@dataclass(frozen=True)
class StepCapacity:
    """What the spec says about a step's capacity per pod: rows per batch (0: no batching) and model instances
    (batches computed at once)."""

    max_batch_size: int = 0
    instances: int = 1

    @classmethod
    def of(cls, step: StepSpec) -> StepCapacity:
        instances = step.model.instances if step.model is not None else 1
        return cls(max_batch_size=step.batching.maxBatchSize, instances=step.batching.maxConcurrentBatches or instances)


@dataclass(frozen=True)
class StepFigures:
    """One step over one window, summed over its pods seen at both ends of it. Times in seconds; None: nothing
    was observed in the window."""

    name: str
    pods: int
    instances: int
    arrival_items_per_s: float = 0.0
    arrival_requests_per_s: float = 0.0
    completed_items_per_s: float = 0.0
    completed_requests_per_s: float = 0.0
    queue_p50_s: float | None = None
    queue_p99_s: float | None = None
    compute_p50_s: float | None = None
    compute_p99_s: float | None = None
    mean_batch_size: float | None = None
    batch_fill: float | None = None
    utilization: float = 0.0
    queue_depth: float = 0.0
    errors_per_s: Mapping[str, float] = field(default_factory=dict)


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """The q-quantile of cumulative `buckets`, interpolated linearly inside its bucket as Prometheus'
    histogram_quantile does; the highest finite bound when it falls in +Inf; None when nothing was observed."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def _quantiles(histogram: HistogramSample) -> tuple[float | None, float | None]:
    return histogram_quantile(0.5, histogram.buckets), histogram_quantile(0.99, histogram.buckets)


def counter_deltas(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """Counters by label (e.g. answers by code) counted between two scrapes of one pod."""
    if any(after.get(code, 0.0) < value for code, value in before.items()):
        return dict(after)  # a counter went down: the process restarted, everything counted is new
    return {code: value - before.get(code, 0.0) for code, value in after.items()}


def step_figures(
    name: str, before: Mapping[str, PodSample], after: Mapping[str, PodSample], *, seconds: float, capacity: StepCapacity
) -> StepFigures:
    """The figures of step `name` from its pods' samples (by pod) `seconds` apart. A pod seen only once (new, or
    gone) counts for neither rates nor capacity; one whose counters went down restarted and counts from zero."""
    if seconds <= 0:
        raise ValueError(f"the window must be > 0 seconds, got {seconds}")
    pods = sorted(set(before) & set(after))
    requests: dict[str, float] = {}
    queue = compute = batches = HistogramSample()
    depth_change = 0.0
    received: float | None = 0.0
    received_rows = 0.0
    busy: float | None = 0.0
    for pod in pods:
        old, new = before[pod], after[pod]
        for code, count in counter_deltas(new.requests, old.requests).items():
            requests[code] = requests.get(code, 0.0) + count
        restarted = new.batch_size.count < old.batch_size.count
        queue = queue.plus(new.queue.minus(old.queue))
        compute = compute.plus(new.compute.minus(old.compute))
        batches = batches.plus(new.batch_size.minus(old.batch_size))
        depth_change += new.queue_depth - (0.0 if restarted else old.queue_depth)
        if busy is not None and new.busy_seconds is not None and old.busy_seconds is not None:
            busy += new.busy_seconds - (0.0 if new.busy_seconds < old.busy_seconds else old.busy_seconds)
        else:
            busy = None  # a pod without the counter (an older step): its batches' compute time instead
        counted = (new.received, new.received_rows, old.received, old.received_rows)
        if received is not None and None not in counted:
            got = counter_deltas(
                {"requests": new.received or 0.0, "rows": new.received_rows or 0.0},
                {"requests": old.received or 0.0, "rows": old.received_rows or 0.0},
            )
            received += got["requests"]
            received_rows += got["rows"]
        else:
            received = None  # a pod without the counters (an older step): derive arrivals from what was done
    instances = capacity.instances * len(pods)
    mean_batch = batches.sum / batches.count if batches.count else None
    queue_p50, queue_p99 = _quantiles(queue)
    compute_p50, compute_p99 = _quantiles(compute)
    return StepFigures(
        name=name,
        pods=len(pods),
        instances=instances,
        arrival_items_per_s=(received_rows if received is not None else max(0.0, batches.sum + depth_change)) / seconds,
        arrival_requests_per_s=(received if received is not None else sum(requests.values())) / seconds,
        completed_items_per_s=batches.sum / seconds,
        completed_requests_per_s=requests.get("OK", 0.0) / seconds,
        queue_p50_s=queue_p50,
        queue_p99_s=queue_p99,
        compute_p50_s=compute_p50,
        compute_p99_s=compute_p99,
        mean_batch_size=mean_batch,
        batch_fill=mean_batch / capacity.max_batch_size if mean_batch is not None and capacity.max_batch_size else None,
        utilization=min(1.0, (compute.sum if busy is None else busy) / (seconds * instances)) if instances else 0.0,
        queue_depth=sum(after[pod].queue_depth for pod in after),
        errors_per_s={code: count / seconds for code, count in sorted(requests.items()) if code != "OK" and count > 0},
    )


def bottleneck(figures: Sequence[StepFigures]) -> tuple[str, str]:
    """(step, why): the step whose model instances are busiest; ("", why not) while no step computed anything."""
    busy = [f for f in figures if f.utilization > 0]
    if not busy:
        return "", "no step computed anything in the last window"
    top = max(busy, key=lambda f: f.utilization)
    return top.name, (
        f"{top.name}: {top.utilization:.0%} busy ({top.instances} model instance(s) over {top.pods} pod(s)); "
        f"queue {top.queue_depth:.0f} rows"
    )


def saturated_steps(
    depths: Mapping[str, Sequence[float]], rejected_per_s: Mapping[str, float], *, windows: int = 3
) -> dict[str, str]:
    """Steps that cannot keep up, with why: their queue grew in each of the last `windows` windows (from
    `depths`, one queue depth per scrape, oldest first), or they refused requests because their queue was full."""
    found: dict[str, str] = {}
    for step in sorted({*depths, *rejected_per_s}):
        last = list(depths.get(step, ()))[-(windows + 1) :]
        if len(last) == windows + 1 and all(b > a for a, b in itertools.pairwise(last)):
            found[step] = (
                f"step {step!r}: its queue grew in each of the last {windows} windows ({last[0]:.0f} -> {last[-1]:.0f} rows)"
            )
        elif rejected_per_s.get(step, 0.0) > 0:
            found[step] = f"step {step!r}: refuses {rejected_per_s[step]:.2g} requests/s ({REJECTED_CODE}: its queue is full)"
    return found
