"""One scrape of a step's or a gateway's Prometheus metrics, parsed into the few series the live figures use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Buckets", "HistogramSample", "PodSample", "parse_metrics"]

#: (upper bound, cumulative count) pairs, ascending, the last one +Inf.
Buckets = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class HistogramSample:
    """A Prometheus histogram as scraped: cumulative buckets, sum and count."""

    buckets: Buckets = ()
    sum: float = 0.0
    count: float = 0.0

    def minus(self, before: HistogramSample) -> HistogramSample:
        """What was observed since `before` (all of it when the counts went down: the process restarted)."""
        if self.count < before.count or len(before.buckets) != len(self.buckets):
            return self
        return HistogramSample(
            buckets=tuple((le, n - m) for (le, n), (_, m) in zip(self.buckets, before.buckets)),
            sum=self.sum - before.sum,
            count=self.count - before.count,
        )

    def plus(self, other: HistogramSample) -> HistogramSample:
        if not self.buckets:
            return other
        if not other.buckets:
            return self
        return HistogramSample(
            buckets=tuple((le, n + m) for (le, n), (_, m) in zip(self.buckets, other.buckets)),
            sum=self.sum + other.sum,
            count=self.count + other.count,
        )


@dataclass(frozen=True)
class PodSample:
    """What one pod (a step replica or a gateway) reported at one scrape."""

    requests: Mapping[str, float] = field(default_factory=dict)  # answers by gRPC status code
    latency: HistogramSample = HistogramSample()
    queue: HistogramSample = HistogramSample()
    compute: HistogramSample = HistogramSample()
    batch_size: HistogramSample = HistogramSample()
    queue_depth: float = 0.0
    received: float | None = None  # requests received (steps that count them)
    received_rows: float | None = None
    busy_seconds: float | None = None  # model instance-seconds computing (steps that count them)
    cpu_seconds: float | None = None  # the process's CPU time (a gateway's busy time)


#: family name -> PodSample field, for a step's series and a gateway's.
_HISTOGRAMS = {
    "conveyor_step_request_seconds": "latency",
    "conveyor_step_queue_seconds": "queue",
    "conveyor_step_compute_seconds": "compute",
    "conveyor_step_batch_size": "batch_size",
    "conveyor_gateway_request_seconds": "latency",
}
_REQUESTS = ("conveyor_step_requests", "conveyor_gateway_requests")
#: counters -> PodSample field (steps that count them; older steps do not)
_COUNTERS = {
    "conveyor_step_received": "received",
    "conveyor_step_received_rows": "received_rows",
    "conveyor_step_busy_seconds": "busy_seconds",
}


def _histogram(samples: Sequence[tuple[str, Mapping[str, str], float]]) -> HistogramSample:
    buckets: dict[float, float] = {}
    total = count = 0.0
    for name, labels, value in samples:
        if name.endswith("_bucket"):
            le = float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + value
        elif name.endswith("_sum"):
            total += value
        elif name.endswith("_count"):
            count += value
    return HistogramSample(buckets=tuple(sorted(buckets.items())), sum=total, count=count)


def parse_metrics(text: str, step: str | None = None) -> PodSample:
    """The live figures' series from a `/metrics` page (a step's or a gateway's; other series are ignored).

    With `step`, only that step's series count (labelled ``step="<step>"``): a step's process also serves the steps
    that run in it (`inProcessWith`), each with series of its own on the same page.
    """
    fields: dict[str, object] = {}
    requests: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        samples = [
            (s.name, s.labels, float(s.value))
            for s in family.samples
            if step is None or s.labels.get("step", step) == step
        ]
        if family.name in _HISTOGRAMS:
            fields[_HISTOGRAMS[family.name]] = _histogram(samples)
        elif family.name in _REQUESTS:
            for name, labels, value in samples:
                if name.endswith("_total"):
                    code = labels.get("code", "")
                    requests[code] = requests.get(code, 0.0) + value
        elif family.name in _COUNTERS:
            fields[_COUNTERS[family.name]] = sum(value for name, _, value in samples if name.endswith("_total"))
        elif family.name == "process_cpu_seconds":
            fields["cpu_seconds"] = sum(value for _, _, value in samples)
        elif family.name == "conveyor_step_queue_depth":
            fields["queue_depth"] = sum(value for _, _, value in samples)
    return PodSample(requests=requests, **fields)  # type: ignore[arg-type]
