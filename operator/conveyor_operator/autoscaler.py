"""Balanced autoscaling (pure): each autoscaled step gets the replicas its arrival rate needs at its measured capacity
per replica, with HPA-style stabilization windows both ways so that it does not flap.

A step's capacity comes from its own figures (conveyor_runtime.live): items computed per second over the share of its
instances that were busy, per pod. Sizing every step to the items that arrive at it keeps the bottleneck fed: the
steps before it are sized to the offered load, the ones after it follow as it speeds up. A step whose pods also run
other steps (`inProcessWith` it) gets what the most demanding of them needs.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor_runtime.live import StepFigures
from conveyor_runtime.spec import GATEWAY_STEP_NAME
from conveyor_runtime.spec.model import AutoscalingSpec

__all__ = ["Autoscaler", "Decision", "recommend", "recommend_with_guests", "with_replicas"]


@dataclass(frozen=True)
class Decision:
    """Scale `step` from `current` to `replicas`, because of `reason` (the figures)."""

    step: str
    current: int
    replicas: int
    reason: str

    @property
    def message(self) -> str:
        what = "the gateway" if self.step == GATEWAY_STEP_NAME else f"step {self.step!r}"
        return f"{what}: replicas {self.current} -> {self.replicas}: {self.reason}"


def recommend(figures: StepFigures, policy: AutoscalingSpec) -> tuple[int, str] | None:
    """Replicas for the last window's load, and why; None when the window measured nothing to size from (no pod read
    twice, or items arrive but none was computed yet)."""
    if figures.pods == 0:
        return None
    if figures.arrival_items_per_s <= 0 and figures.queue_depth <= 0:
        return policy.minReplicas, "no items arrive"
    if figures.utilization <= 0 or figures.completed_items_per_s <= 0:
        return None
    per_replica = figures.completed_items_per_s / (figures.utilization * figures.pods)
    needed = math.ceil(figures.arrival_items_per_s / (per_replica * policy.targetUtilization) - 1e-9)
    replicas = min(policy.maxReplicas, max(policy.minReplicas, needed))
    return replicas, (
        f"{figures.arrival_items_per_s:.3g} items/s arrive; one replica computes {per_replica:.3g} items/s flat out "
        f"({figures.utilization:.0%} busy over {figures.pods} pods); target {policy.targetUtilization:.0%} busy"
    )


def recommend_with_guests(figures: StepFigures, guests: Sequence[StepFigures], policy: AutoscalingSpec) -> tuple[int, str] | None:
    """Replicas for a step and the steps that run in its processes (`guests`): each replica serves them all, so the
    most that one of them needs; None while one of them cannot be sized (its load is not known yet)."""
    found = recommend(figures, policy)
    for guest in guests:
        needed = recommend(guest, policy)
        if found is None or needed is None:
            return None
        if needed[0] > found[0]:
            found = needed[0], f"for step {guest.name!r}, which runs in its pods: {needed[1]}"
    return found


class Autoscaler:
    """Remembers each step's recommendations (by key, e.g. namespace/pipeline/step) and decides when to act on them:
    up to the lowest recommendation of the up window, down to the highest of the down window, each only once the
    step has been watched for that whole window."""

    def __init__(self) -> None:
        self._history: dict[str, deque[tuple[float, int, str]]] = {}
        self._since: dict[str, float] = {}

    def forget(self, prefix: str) -> None:
        for key in [k for k in self._history if k.startswith(prefix)]:
            self._history.pop(key, None)
            self._since.pop(key, None)

    def decide(
        self,
        key: str,
        figures: StepFigures,
        policy: AutoscalingSpec,
        *,
        current: int,
        now: float,
        guests: Sequence[StepFigures] = (),
    ) -> Decision | None:
        """Scale the step to the figures' recommendation once it held for its window; `guests` are the figures of the
        steps that run in its processes (see `recommend_with_guests`)."""
        found = recommend_with_guests(figures, guests, policy)
        if found is None:
            return None
        history = self._history.setdefault(key, deque())
        since = self._since.setdefault(key, now)
        history.append((now, *found))
        keep = max(policy.scaleUpWindowSeconds, policy.scaleDownWindowSeconds)
        while history and history[0][0] < now - keep:
            history.popleft()

        def window(seconds: int) -> list[tuple[float, int, str]] | None:
            if now - since < seconds:
                return None  # not watched for the whole window yet
            return [entry for entry in history if entry[0] >= now - seconds]

        up, down = window(policy.scaleUpWindowSeconds), window(policy.scaleDownWindowSeconds)
        if up:
            lowest = min(up, key=lambda entry: entry[1])
            if lowest[1] > current:
                return Decision(figures.name, current, lowest[1], lowest[2])
        if down:
            highest = max(down, key=lambda entry: entry[1])
            if highest[1] < current:
                return Decision(figures.name, current, highest[1], highest[2])
        return None


def with_replicas(body: Mapping[str, Any], replicas: Mapping[str, int]) -> dict[str, Any]:
    """A copy of the pipeline object whose named steps (and the gateway, under `GATEWAY_STEP_NAME`) have the given
    replicas (what the reconciler then renders)."""
    changed: dict[str, Any] = copy.deepcopy(dict(body))
    spec = changed.get("spec") or {}
    for step in spec.get("steps") or []:
        if isinstance(step, dict) and step.get("name") in replicas:
            step["replicas"] = replicas[step["name"]]
    if GATEWAY_STEP_NAME in replicas and isinstance(spec.get("gateway", {}), dict):
        spec.setdefault("gateway", {})["replicas"] = replicas[GATEWAY_STEP_NAME]
    return changed
