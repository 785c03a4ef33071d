"""Figures of a whole pipeline from successive scrapes: keeps the previous scrape and each step's queue depths."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from .figures import (
    REJECTED_CODE,
    StepCapacity,
    StepFigures,
    bottleneck,
    counter_deltas,
    histogram_quantile,
    saturated_steps,
    step_figures,
)
from .samples import HistogramSample, PodSample

__all__ = ["LiveTracker", "PipelineFigures", "Scrape", "gateway_figures"]


@dataclass(frozen=True)
class Scrape:
    """Every pod's sample at one moment (`at`: monotonic seconds): step -> pod -> sample, and the gateway's pods."""

    at: float
    steps: Mapping[str, Mapping[str, PodSample]]
    gateway: Mapping[str, PodSample] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineFigures:
    """One window of the pipeline: the gateway's answers (throughput, latency), each step's figures, the busiest step
    and the steps that cannot keep up (step -> why)."""

    window_s: float
    steps: list[StepFigures]
    throughput_per_s: float
    p50_s: float | None
    p99_s: float | None
    errors_per_s: Mapping[str, float]
    bottleneck: str
    bottleneck_reason: str
    saturated: Mapping[str, str]
    gateway_pods: int = 0  # gateway pods read at both ends of the window (0: throughput and latency unknown)
    gateway: StepFigures | None = None  # the gateway as a step: requests in and answered, CPU busy share per pod


def _answers(before: Mapping[str, PodSample], after: Mapping[str, PodSample]) -> dict[str, float]:
    """Answers by code counted between two scrapes, summed over the pods read at both."""
    answers: dict[str, float] = {}
    for pod in sorted(set(before) & set(after)):
        for code, count in counter_deltas(after[pod].requests, before[pod].requests).items():
            answers[code] = answers.get(code, 0.0) + count
    return answers


def _gateway(
    before: Mapping[str, PodSample], after: Mapping[str, PodSample], seconds: float
) -> tuple[float, HistogramSample, dict[str, float]]:
    answers = _answers(before, after)
    latency = HistogramSample()
    for pod in sorted(set(before) & set(after)):
        latency = latency.plus(after[pod].latency.minus(before[pod].latency))
    errors = {code: count / seconds for code, count in answers.items() if code != "OK" and count > 0}
    return answers.get("OK", 0.0) / seconds, latency, errors


def gateway_figures(before: Mapping[str, PodSample], after: Mapping[str, PodSample], seconds: float) -> StepFigures:
    """The gateway's load as a step's figures (items = requests): what arrived (every answer), what it answered OK,
    and how busy its pods were (CPU seconds per second, at most one core each: the event loop's share)."""
    pods = sorted(set(before) & set(after))
    answers = _answers(before, after)
    arrived, ok = sum(answers.values()), answers.get("OK", 0.0)
    busy = 0.0
    for pod in pods:
        old, new = before[pod], after[pod]
        if new.cpu_seconds is not None and old.cpu_seconds is not None:
            busy += min(seconds, max(0.0, new.cpu_seconds - (0.0 if new.cpu_seconds < old.cpu_seconds else old.cpu_seconds)))
    return StepFigures(
        name="gateway",
        pods=len(pods),
        instances=len(pods),
        arrival_items_per_s=arrived / seconds,
        arrival_requests_per_s=arrived / seconds,
        completed_items_per_s=ok / seconds,
        completed_requests_per_s=ok / seconds,
        utilization=busy / (seconds * len(pods)) if pods else 0.0,
    )


class LiveTracker:
    """Feed it scrapes in order; each `update` after the first gives the figures of the window since the previous one."""

    def __init__(self, capacities: Mapping[str, StepCapacity], *, windows: int = 3) -> None:
        if windows < 1:
            raise ValueError(f"windows must be >= 1, got {windows}")
        self.capacities = dict(capacities)
        self.windows = windows
        self._previous: Scrape | None = None
        self._depths: dict[str, deque[float]] = {}

    def update(self, scrape: Scrape) -> PipelineFigures | None:
        previous, self._previous = self._previous, scrape
        for name in self.capacities:
            pods = scrape.steps.get(name, {})
            if pods:
                self._depths.setdefault(name, deque(maxlen=self.windows + 1)).append(sum(p.queue_depth for p in pods.values()))
            else:
                self._depths.pop(name, None)  # no pod answered: its history says nothing now
        if previous is None or scrape.at <= previous.at:
            return None
        seconds = scrape.at - previous.at
        steps = [
            step_figures(
                name,
                previous.steps.get(name, {}),
                scrape.steps.get(name, {}),
                seconds=seconds,
                capacity=self.capacities.get(name, StepCapacity()),
            )
            for name in self.capacities
        ]
        throughput, latency, errors = _gateway(previous.gateway, scrape.gateway, seconds)
        name, reason = bottleneck(steps)
        rejected = {f.name: f.errors_per_s[REJECTED_CODE] for f in steps if REJECTED_CODE in f.errors_per_s}
        return PipelineFigures(
            window_s=seconds,
            steps=steps,
            throughput_per_s=throughput,
            p50_s=histogram_quantile(0.5, latency.buckets),
            p99_s=histogram_quantile(0.99, latency.buckets),
            errors_per_s=errors,
            bottleneck=name,
            bottleneck_reason=reason,
            saturated=saturated_steps(self._depths, rejected, windows=self.windows),
            gateway_pods=len(set(previous.gateway) & set(scrape.gateway)),
            gateway=gateway_figures(previous.gateway, scrape.gateway, seconds),
        )
