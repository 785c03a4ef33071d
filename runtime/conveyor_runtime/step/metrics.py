"""Prometheus metrics of one step, in a registry of its own so several servers can share one process.

All series carry a ``step`` label. Served by `serving.MetricsEndpoint` on its own port (``--metrics-port``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["BATCH_REASONS", "StepMetrics"]

#: Why a batch left the queue.
BATCH_REASONS = ("full", "preferred", "timeout", "idle", "single")

_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class StepMetrics:
    """The series of one step: requests and errors by code, queue and compute time, batch sizes and reasons."""

    def __init__(self, step: str, registry: CollectorRegistry | None = None) -> None:
        self.step = step
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._requests = Counter(
            "conveyor_step_requests", "Inference requests answered, by gRPC status code", ["step", "code"], registry=r
        )
        self._latency = Histogram(
            "conveyor_step_request_seconds", "Time from receiving a request to answering it", ["step"], buckets=_SECONDS, registry=r
        )
        self._queue = Histogram(
            "conveyor_step_queue_seconds", "Time an item waited in the batch queue", ["step"], buckets=_SECONDS, registry=r
        )
        self._compute = Histogram(
            "conveyor_step_compute_seconds", "Time to compute one batch", ["step"], buckets=_SECONDS, registry=r
        )
        self._batch_size = Histogram(
            "conveyor_step_batch_size", "Rows in each batch sent to compute", ["step"], buckets=_ROWS, registry=r
        )
        self._batches = Counter(
            "conveyor_step_batches", "Batches sent to compute, by why they were sent", ["step", "reason"], registry=r
        )
        self._depth = Gauge("conveyor_step_queue_depth", "Rows waiting in the batch queue", ["step"], registry=r)
        self._received = Counter(
            "conveyor_step_received", "Inference requests received, before any check", ["step"], registry=r
        )
        self._received_rows = Counter(
            "conveyor_step_received_rows", "Rows received (the first input's batch dimension)", ["step"], registry=r
        )
        for reason in BATCH_REASONS:
            self._batches.labels(step, reason)
        self._requests.labels(step, "OK")
        self.latency = self._latency.labels(step)
        self.queue_time = self._queue.labels(step)
        self.compute_time = self._compute.labels(step)
        self.batch_size = self._batch_size.labels(step)
        self.queue_depth = self._depth.labels(step)
        self.received = self._received.labels(step)
        self.received_rows = self._received_rows.labels(step)

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

    def text(self) -> str:
        """The exposition text (what the endpoint serves)."""
        return generate_latest(self.registry).decode()
