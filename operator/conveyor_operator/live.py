"""Live status: at each resync, read the metrics endpoints of a pipeline's pods and turn the figures (computed by
conveyor_runtime.live) into `status.live` and the `Saturated` condition.

Reads of one pipeline are at least `LIVE_INTERVAL_S` apart; `status.live` is rewritten only when a figure moved by
more than `CHANGE` (or a step became the bottleneck, or the last write is `REFRESH_S` old), so the status patches
stay small and rare.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from conveyor_runtime.live import (
    LiveTracker,
    PipelineFigures,
    PodSample,
    Scrape,
    StepCapacity,
    StepFigures,
    fetch_pages,
    format_rate,
    format_seconds,
    parse_metrics,
)
from conveyor_runtime.spec import METRICS_PORT, PipelineSpec, guests_of

from .cluster import POD_KIND, ClusterError
from .labels import COMPONENT_LABEL, STEP_LABEL, child_selector
from .scrape import step_samples
from .status import Condition, LiveStatus, LiveStepStatus, condition

__all__ = [
    "CHANGE",
    "LIVE_INTERVAL_S",
    "REFRESH_S",
    "LiveSampler",
    "live_changed",
    "live_status",
    "pod_metrics_url",
    "saturated_condition",
    "seconds_between",
]

logger = logging.getLogger(__name__)

#: Least seconds between two reads of one pipeline's pods (the resync, every 15 s by default, drives them).
LIVE_INTERVAL_S = 10.0
#: Rewrite status.live at least this often, so that sampledAt says the figures are current.
REFRESH_S = 60.0
#: Relative move of a figure that is worth a status write.
CHANGE = 0.1
#: Below these absolute moves nothing is worth a write: fractions (utilization, fill) and everything else.
_FRACTION_FLOOR, _FLOOR = 0.05, 1.0
_FRACTIONS = frozenset({"utilization", "batchFill"})
#: Derived from other fields, or moving by nature: never a reason to write on their own.
_IGNORED = frozenset({"sampledAt", "windowSeconds", "throughput", "p99", "bottleneckReason"})

#: Reads `/metrics` pages: key -> URL in, key -> page out (pages that could not be read left out).
Fetch = Callable[[Mapping[str, str]], dict[str, str]]


class PodLister(Protocol):
    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]: ...


def pod_metrics_url(pod: Mapping[str, Any]) -> str | None:
    """Where a running pod serves its metrics: its IP and the `prometheus.io/port` and `prometheus.io/path`
    annotations that render.py puts on every step and gateway pod; None for a pod not running (or going away)."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    ip = status.get("podIP")
    if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not ip:
        return None
    annotations = meta.get("annotations") or {}
    port = annotations.get("prometheus.io/port") or METRICS_PORT
    path = annotations.get("prometheus.io/path") or "/metrics"
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}{path}"


def _round(value: float, digits: int = 3) -> float:
    return float(f"{value:.{digits}g}")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else _round(seconds * 1000)


def _step(f: StepFigures) -> LiveStepStatus:
    return LiveStepStatus(
        name=f.name,
        pods=f.pods,
        arrivalItemsPerSecond=_round(f.arrival_items_per_s),
        arrivalRequestsPerSecond=_round(f.arrival_requests_per_s),
        completedItemsPerSecond=_round(f.completed_items_per_s),
        completedRequestsPerSecond=_round(f.completed_requests_per_s),
        queueP50Ms=_ms(f.queue_p50_s),
        queueP99Ms=_ms(f.queue_p99_s),
        computeP50Ms=_ms(f.compute_p50_s),
        computeP99Ms=_ms(f.compute_p99_s),
        meanBatchSize=None if f.mean_batch_size is None else _round(f.mean_batch_size),
        batchFill=None if f.batch_fill is None else round(f.batch_fill, 2),
        utilization=_round(f.utilization, 2),  # 2 significant digits: a step busy 0.4% of the time is not 0
        queueDepth=round(f.queue_depth),
        errorsPerSecond={code: _round(rate) for code, rate in f.errors_per_s.items()},
    )


def _where(step: str, hosts: Mapping[str, str]) -> str:
    """Where a step that runs in another's processes (`inProcessWith`) runs: what to scale for it."""
    return f" (it runs in the pods of step {hosts[step]!r}: scale that step)" if step in hosts else ""


def live_status(figures: PipelineFigures, *, now: str, hosts: Mapping[str, str] | None = None) -> LiveStatus:
    """status.live from one window's figures: the printer columns' strings plus each step's figures, rounded to three
    significant digits (ms for times) so that the patch stays small. `hosts` maps each step that runs in another's
    processes to that step: a bottleneck among them says so."""
    return LiveStatus(
        sampledAt=now,
        windowSeconds=round(figures.window_s, 1),
        throughput=f"{format_rate(figures.throughput_per_s)}/s",
        p99=format_seconds(figures.p99_s),
        bottleneck=figures.bottleneck,
        bottleneckReason=figures.bottleneck_reason + (_where(figures.bottleneck, hosts) if hosts else ""),
        throughputPerSecond=_round(figures.throughput_per_s),
        p50Ms=_ms(figures.p50_s),
        p99Ms=_ms(figures.p99_s),
        steps=[_step(f) for f in figures.steps],
    )


def _moved(old: Any, new: Any, key: str = "") -> bool:
    if key in _IGNORED:
        return False
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return set(old) != set(new) or any(_moved(old[k], new[k], k) for k in new)
    if isinstance(old, list) and isinstance(new, list):
        return len(old) != len(new) or any(_moved(a, b, key) for a, b in zip(old, new, strict=True))
    if isinstance(old, int | float) and isinstance(new, int | float) and not isinstance(old, bool):
        floor = _FRACTION_FLOOR if key in _FRACTIONS else _FLOOR
        difference = abs(float(new) - float(old))
        return difference > floor and difference > CHANGE * max(abs(float(old)), abs(float(new)))
    return bool(old != new)


def live_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any], *, age_s: float) -> bool:
    """Whether `new` (status.live as JSON) is worth writing over `old`: a figure moved by more than CHANGE, a step,
    pod count or bottleneck changed, or `old` is REFRESH_S old."""
    return old is None or age_s >= REFRESH_S or _moved(old, new)


def seconds_between(earlier: str, later: str) -> float:
    """Seconds from one RFC 3339 timestamp to another (infinite when one cannot be read)."""
    try:
        return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()
    except (TypeError, ValueError):
        return float("inf")


def saturated_condition(
    figures: PipelineFigures,
    *,
    now: str,
    generation: int,
    previous: Sequence[Mapping[str, Any]],
    hosts: Mapping[str, str] | None = None,
) -> Condition:
    """`Saturated`: True naming each step whose queue keeps growing or that refuses requests, else False; for a step
    that runs in another's processes (`hosts`: step -> its host), the step to add replicas to."""
    if figures.saturated:
        named = [why + _where(step, hosts or {}) for step, why in figures.saturated.items()]
        message = "; ".join(named) + "; add replicas to it or send less"
        return condition("Saturated", "True", "StepSaturated", message, now=now, generation=generation, previous=previous)
    return condition(
        "Saturated",
        "False",
        "AsExpected",
        "no step's queue keeps growing and none refuses requests",
        now=now,
        generation=generation,
        previous=previous,
    )


class LiveSampler:
    """Reads pipelines' pods and keeps, per pipeline, the tracker that turns successive reads into figures."""

    def __init__(
        self,
        cluster: PodLister,
        *,
        interval_s: float = LIVE_INTERVAL_S,
        fetch: Fetch = fetch_pages,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster = cluster
        self.interval_s = interval_s
        self._fetch = fetch
        self._clock = clock
        self._trackers: dict[tuple[str, str], LiveTracker] = {}
        self._last: dict[tuple[str, str], float] = {}

    def forget(self, namespace: str, name: str) -> None:
        self._trackers.pop((namespace, name), None)
        self._last.pop((namespace, name), None)

    def sample(self, namespace: str, name: str, spec: PipelineSpec) -> PipelineFigures | None:
        """The figures since this pipeline's previous read; None when it is not due yet, on its first read, or when
        its pods cannot be listed. Blocking (API call and HTTP reads): call from a worker thread.

        A step's figures come from the series labelled with its name on the pods that serve it: its own, or for a
        step that runs in another's processes (`inProcessWith`), its host's."""
        key = (namespace, name)
        now = self._clock()
        if now - self._last.get(key, float("-inf")) < self.interval_s:
            return None
        self._last[key] = now
        capacities = {step.name: StepCapacity.of(step) for step in spec.steps}
        tracker = self._trackers.get(key)
        if tracker is None or tracker.capacities != capacities:
            tracker = self._trackers[key] = LiveTracker(capacities)
        try:
            pods = self.cluster.list(*POD_KIND, namespace, child_selector(name))
        except ClusterError as exc:
            logger.debug("%s/%s: cannot list its pods for live status: %s", namespace, name, exc)
            return None
        urls: dict[str, str] = {}
        owners: dict[str, str | None] = {}  # pod -> its step (None: the gateway)
        for pod in pods:
            meta = pod.get("metadata") or {}
            labels = meta.get("labels") or {}
            url = pod_metrics_url(pod)
            if url is not None and labels.get(COMPONENT_LABEL) in ("step", "gateway"):
                urls[str(meta["name"])] = url
                owners[str(meta["name"])] = labels.get(STEP_LABEL) if labels.get(COMPONENT_LABEL) == "step" else None
        pages = self._fetch(urls)
        at = self._clock()
        guests = {step.name: [guest.name for guest in guests_of(spec, step.name)] for step in spec.steps}
        steps: dict[str, dict[str, PodSample]] = {}
        gateway: dict[str, PodSample] = {}
        for pod_name, page in pages.items():
            step = owners[pod_name]
            try:
                if step is None:
                    gateway[pod_name] = parse_metrics(page)
                    continue
                for served, sample in step_samples(page, step, guests.get(step, [])).items():
                    steps.setdefault(served, {})[pod_name] = sample
            except ValueError as exc:
                logger.debug("%s/%s: cannot parse the metrics of pod %s: %s", namespace, name, pod_name, exc)
        return tracker.update(Scrape(at=at, steps=steps, gateway=gateway))
