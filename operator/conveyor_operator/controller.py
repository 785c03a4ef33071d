"""The work of one queued reconcile: read the pipeline afresh, reconcile it, write status only over that very read.

`PipelineController.sync` blocks on API calls, so the queue runs it in a worker thread; the queue also makes sure
that two syncs of one pipeline never overlap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from conveyor_runtime.live import PipelineFigures
from conveyor_runtime.spec import API_GROUP, API_VERSION, GATEWAY_STEP_NAME, KIND, PipelineSpec, guests_of

from .autoscaler import Autoscaler, with_replicas
from .cluster import Cluster, ClusterError
from .labels import DEFAULT_IMAGE
from .live import LIVE_INTERVAL_S, LiveSampler, live_changed, live_status, saturated_condition, seconds_between
from .reconciler import Event, Outcome, Reconciler, utc_now, validate_spec
from .status import Condition
from .workqueue import Key, Retry

__all__ = ["PIPELINE_API_VERSION", "PipelineController", "status_changes"]

logger = logging.getLogger(__name__)

PIPELINE_API_VERSION = f"{API_GROUP}/{API_VERSION}"


def status_changes(
    outcome: Outcome,
    current: Mapping[str, Any],
    live: Mapping[str, Any] | None = None,
    saturated: Condition | None = None,
) -> dict[str, Any]:
    """The fields of status that change (None deletes a field in a merge patch); {} when nothing does.

    A reconcile does not compute `live` and the `Saturated` condition: without new ones, the current ones are kept.
    """
    new = outcome.status.model_dump(mode="json")
    new["steps"] = [step.model_dump(mode="json", exclude_none=True) for step in outcome.status.steps]
    new["live"] = live if live is not None else current.get("live")
    kept = next((c for c in current.get("conditions") or [] if c.get("type") == "Saturated"), None)
    extra = saturated.model_dump(mode="json") if saturated is not None else kept
    if extra is not None:
        new["conditions"] = [*new["conditions"], extra]
    return {key: value for key, value in new.items() if current.get(key) != value}


class PipelineController:
    """Reconciles pipelines by key; status is patched with the resourceVersion it was computed from."""

    def __init__(self, cluster: Cluster, default_image: str = DEFAULT_IMAGE, *, live_interval_s: float = LIVE_INTERVAL_S) -> None:
        self.cluster = cluster
        self.reconciler = Reconciler(cluster, default_image=default_image)
        self.live = LiveSampler(cluster, interval_s=live_interval_s)
        self.autoscaler = Autoscaler()
        self._clock = time.monotonic

    def sync(self, key: Key) -> None:
        """Reconcile one pipeline; raises Retry when it should run again (at once when its status write was refused
        because the pipeline changed since it was read)."""
        namespace, name = key
        try:
            pipeline = self.cluster.get(PIPELINE_API_VERSION, KIND, namespace, name)
            if pipeline is None or (pipeline.get("metadata") or {}).get("deletionTimestamp"):
                self.live.forget(namespace, name)
                self.autoscaler.forget(f"{namespace}/{name}/")
                return  # its children go with it (owner references)
            spec, _ = validate_spec(name, pipeline.get("spec") or {})
            figures = self.live.sample(namespace, name, spec) if spec is not None else None
            replicas, scaled = self._autoscale(key, pipeline, spec, figures)
            outcome = self.reconciler.reconcile(with_replicas(pipeline, replicas) if replicas else pipeline)
            outcome.events[:0] = scaled  # actions taken: posted whatever happens to the status write
        except ClusterError as exc:
            self._failed(key, exc)
            return
        actions = [event for event in outcome.events if not event.transition]  # done, whatever happens next
        if outcome.retry:  # status would describe some children as they were before; the next run tells
            self._post(pipeline, actions)
            raise Retry("; ".join(outcome.retry))
        live, saturated, live_events = self._live(pipeline, outcome, figures)
        changes = status_changes(outcome, pipeline.get("status") or {}, live, saturated)
        if changes:
            try:
                self.cluster.patch_status(
                    PIPELINE_API_VERSION, KIND, namespace, name, changes, str(pipeline["metadata"]["resourceVersion"])
                )
            except ClusterError as exc:
                self._post(pipeline, actions)  # the next run finds the transitions again
                if exc.status == 409:
                    raise Retry("changed while it was reconciled; again from a fresh read", delay=0) from None
                self._failed(key, exc)
                return
        self._post(pipeline, [*outcome.events, *live_events])
        if outcome.errors:
            logger.debug("%s/%s: invalid spec, nothing applied", namespace, name)
        else:
            logger.debug("%s/%s: reconciled: %s", namespace, name, outcome.status.conditions[0].message)

    def _autoscale(
        self, key: Key, pipeline: Mapping[str, Any], spec: PipelineSpec | None, figures: PipelineFigures | None
    ) -> tuple[dict[str, int], list[Event]]:
        """Replicas of the autoscaled steps (and gateway): what their Deployments have now (within the bounds), changed where the
        autoscaler decides so on this read's figures; an `Autoscaled` event with the figures for each change."""
        if spec is None:
            return {}, []
        now = self._clock()
        status = pipeline.get("status") or {}
        running = {s.get("name"): s.get("desired") for s in status.get("steps") or []}
        running[GATEWAY_STEP_NAME] = (status.get("gateway") or {}).get("desired")
        measured = {f.name: f for f in figures.steps} if figures is not None else {}
        if figures is not None and figures.gateway is not None:
            measured[GATEWAY_STEP_NAME] = figures.gateway
        replicas: dict[str, int] = {}
        events: list[Event] = []
        scaled = [(s.name, s.autoscaling, s.replicas) for s in spec.steps]
        scaled.append((GATEWAY_STEP_NAME, spec.gateway.autoscaling, spec.gateway.replicas))
        for name, policy, written in scaled:
            if policy is None:
                continue
            found = running.get(name)
            current = found if isinstance(found, int) else written
            current = min(policy.maxReplicas, max(policy.minReplicas, current))
            replicas[name] = current
            if name in measured:
                guests = [measured[guest.name] for guest in guests_of(spec, name) if guest.name in measured]
                decision = self.autoscaler.decide(
                    f"{key[0]}/{key[1]}/{name}", measured[name], policy, current=current, now=now, guests=guests
                )
                if decision is not None:
                    replicas[name] = decision.replicas
                    events.append(Event("Normal", "Autoscaled", decision.message))
        return replicas, events

    def _live(
        self, pipeline: Mapping[str, Any], outcome: Outcome, figures: PipelineFigures | None
    ) -> tuple[dict[str, Any] | None, Condition | None, list[Event]]:
        """status.live (None: keep the current one) and the Saturated condition from this read of the pods (None: no
        read was due); an Event when Saturated turns True or back to False."""
        current = pipeline.get("status") or {}
        if outcome.errors or figures is None or not any(f.pods for f in figures.steps):
            return None, None, []  # not due, a first read, or no step pod answered twice: nothing measured
        now = utc_now()
        previous = current.get("conditions") or []
        hosts = {step.name: step.inProcessWith for step in outcome.status.steps if step.inProcessWith}
        saturated = saturated_condition(
            figures, now=now, generation=outcome.status.observedGeneration, previous=previous, hosts=hosts
        )
        events = []
        was: Mapping[str, Any] = next((c for c in previous if c.get("type") == "Saturated"), {})
        if saturated.status == "True" and (was.get("status") != "True" or was.get("message") != saturated.message):
            events.append(Event("Warning", "Saturated", saturated.message, transition=True))
        elif saturated.status == "False" and was.get("status") == "True":
            events.append(Event("Normal", "Unsaturated", saturated.message, transition=True))
        new = live_status(figures, now=now, hosts=hosts).model_dump(mode="json", exclude_none=True)
        old = current.get("live")
        age = seconds_between(str(old.get("sampledAt")), now) if isinstance(old, Mapping) else float("inf")
        return (new if live_changed(old, new, age_s=age) else None), saturated, events

    @staticmethod
    def _failed(key: Key, exc: ClusterError) -> None:
        """Nothing more to do in a namespace being deleted; otherwise run again after a backoff."""
        if exc.namespace_terminating:
            logger.debug("%s: its namespace is being deleted; nothing to do", "/".join(key))
            return
        raise Retry(f"the API server failed: {exc}") from None

    def _post(self, pipeline: Mapping[str, Any], events: Sequence[Event]) -> None:
        """Post the events and log them once; an event that cannot be posted is logged, not retried."""
        meta = pipeline["metadata"]
        for event in events:
            level = logging.WARNING if event.type == "Warning" else logging.INFO
            logger.log(level, "%s/%s: %s: %s", meta.get("namespace"), meta["name"], event.reason, event.message)
            try:
                self.cluster.post_event(pipeline, event.type, event.reason, event.message)
            except ClusterError as exc:
                level = logging.DEBUG if exc.namespace_terminating else logging.WARNING
                logger.log(
                    level, "%s/%s: could not post the %s event: %s", meta.get("namespace"), meta["name"], event.reason, exc
                )
