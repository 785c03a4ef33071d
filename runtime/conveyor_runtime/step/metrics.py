"""Prometheus metrics of one step, in a registry of its own so several servers can share one process.

All series carry a ``step`` label. Served by `serving.MetricsEndpoint` on its own port (``--metrics-port``).
"""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["BATCH_REASONS", "StepMetrics"]

#: Why a batch left the queue.
BATCH_REASONS = ("full", "preferred", "timeout", "idle", "single")

_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class _Families:
    """The metric families of one registry; each step served by the process is a set of label values in them."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "conveyor_step_requests", "Inference requests answered, by gRPC status code", ["step", "code"], registry=r
        )
        self.latency = Histogram(
            "conveyor_step_request_seconds", "Time from receiving a request to answering it", ["step"], buckets=_SECONDS, registry=r
        )
        self.queue = Histogram(
            "conveyor_step_queue_seconds", "Time an item waited in the batch queue", ["step"], buckets=_SECONDS, registry=r
        )
        self.compute = Histogram(
            "conveyor_step_compute_seconds", "Time to compute one batch", ["step"], buckets=_SECONDS, registry=r
        )
        self.batch_size = Histogram(
            "conveyor_step_batch_size", "Rows in each batch sent to compute", ["step"], buckets=_ROWS, registry=r
        )
        self.batches = Counter(
            "conveyor_step_batches", "Batches sent to compute, by why they were sent", ["step", "reason"], registry=r
        )
        self.busy = Counter(
            "conveyor_step_busy_seconds",
            "Model instance-seconds spent computing batches (a batch computed alone on all the step's threads holds "
            "every instance)",
            ["step"],
            registry=r,
        )
        self.alone = Counter(
            "conveyor_step_alone_batches",
            "Batches computed alone, on a session with all the step's CPU threads (model.adaptiveThreads)",
            ["step"],
            registry=r,
        )
        self.depth = Gauge("conveyor_step_queue_depth", "Rows waiting in the batch queue", ["step"], registry=r)
        self.received = Counter(
            "conveyor_step_received", "Inference requests received, before any check", ["step"], registry=r
        )
        self.received_rows = Counter(
            "conveyor_step_received_rows", "Rows received (the first input's batch dimension)", ["step"], registry=r
        )


_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()


class StepMetrics:
    """The series of one step: requests and errors by code, queue and compute time, batch sizes and reasons.

    Steps that share a process (`inProcessWith`) share its `registry`, each with its own ``step`` label.
    """

    def __init__(self, step: str, registry: CollectorRegistry | None = None) -> None:
        self.step = step
        self.registry = registry if registry is not None else CollectorRegistry()
        families = _FAMILIES.get(self.registry)
        if families is None:
            families = _FAMILIES[self.registry] = _Families(self.registry)
        self._requests = families.requests
        self._batches = families.batches
        for reason in BATCH_REASONS:
            self._batches.labels(step, reason)
        self._requests.labels(step, "OK")
        self.latency = families.latency.labels(step)
        self.queue_time = families.queue.labels(step)
        self.compute_time = families.compute.labels(step)
        self.busy_seconds = families.busy.labels(step)
        self.alone_batches = families.alone.labels(step)
        self.batch_size = families.batch_size.labels(step)
        self.queue_depth = families.depth.labels(step)
        self.received = families.received.labels(step)
        self.received_rows = families.received_rows.labels(step)

    def request_received(self, rows: int) -> None:
        """Count an arriving request and its rows (the live figures' arrival rates)."""
        self.received.inc()
        self.received_rows.inc(rows)

    def request_done(self, code: str, seconds: float) -> None:
        self._requests.labels(self.step, code).inc()
        self.latency.observe(seconds)

    def batch_sent(self, rows: int, reason: str, queue_seconds: list[float]) -> None:
        self.batch_size.observe(rows)
        self._batches.labels(self.step, reason).inc()
        for seconds in queue_seconds:
            self.queue_time.observe(seconds)

    def batch_computed(self, seconds: float, instances: int = 1) -> None:
        """A batch took `seconds` to compute, holding `instances` model instances meanwhile."""
        self.compute_time.observe(seconds)
        self.busy_seconds.inc(seconds * instances)
        if instances > 1:
            self.alone_batches.inc()

    def text(self) -> str:
        """The exposition text (what the endpoint serves)."""
        return generate_latest(self.registry).decode()
