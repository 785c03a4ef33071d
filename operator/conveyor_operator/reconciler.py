"""One level-based reconcile of an InferencePipeline: validate, apply the children, prune the rest, compute status.

Nothing is applied unless the whole spec is valid, so an invalid graph never leaves half-built children.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from conveyor_runtime.errors import FieldError
from conveyor_runtime.spec import PipelineSpec, graph_errors, validation_field_errors

from .cluster import CHILD_KINDS, ChildKey, child_key
from .labels import COMPONENT_LABEL, DEFAULT_IMAGE, STEP_LABEL, child_selector
from .render import Owner, name_errors, render_children
from .status import DeploymentState, PipelineStatus, compute_status, invalid_status

__all__ = ["ClusterAPI", "Event", "Outcome", "Reconciler", "utc_now", "validate_spec"]

logger = logging.getLogger(__name__)


class ClusterAPI(Protocol):
    """What the reconciler needs from the API (cluster.Cluster; tests may pass a fake)."""

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]: ...

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]: ...

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool: ...


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the pipeline."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Outcome:
    """What one reconcile found: the status to write, events to post and, for a bad spec, its errors."""

    status: PipelineStatus
    events: list[Event] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def validate_spec(name: str, raw: Mapping[str, Any]) -> tuple[PipelineSpec | None, list[FieldError]]:
    """The typed spec, or the errors naming each broken field (schema, graph and child-name rules)."""
    try:
        spec = PipelineSpec.model_validate(dict(raw))
    except ValidationError as exc:
        return None, validation_field_errors(exc, prefix="spec")
    errors = graph_errors(spec) + name_errors(name, spec)
    return (None, errors) if errors else (spec, [])


def _condition(conditions: Sequence[Mapping[str, Any]], type_: str) -> Mapping[str, Any]:
    return next((c for c in conditions if c.get("type") == type_), {})


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return not uid or any(ref.get("uid") == uid for ref in refs)


def _describe_child(obj: Mapping[str, Any]) -> str:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    step = labels.get(STEP_LABEL)
    owner = f"step {step!r}" if step else str(labels.get(COMPONENT_LABEL, "pipeline"))
    return f"{obj['kind']} {obj['metadata']['name']} ({owner})"


class Reconciler:
    """Brings one pipeline's children to its spec; safe to run again and again (server-side apply)."""

    def __init__(self, cluster: ClusterAPI, default_image: str = DEFAULT_IMAGE) -> None:
        self.cluster = cluster
        self.default_image = default_image

    def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        """Reconcile from the pipeline object as read from the API (`body`)."""
        meta = body.get("metadata") or {}
        owner = Owner(name=str(meta["name"]), namespace=str(meta.get("namespace") or "default"), uid=str(meta.get("uid") or ""))
        generation = int(meta.get("generation") or 0)
        old_status: Mapping[str, Any] = body.get("status") or {}
        previous: Sequence[Mapping[str, Any]] = old_status.get("conditions") or []
        now = utc_now()

        spec, errors = validate_spec(owner.name, body.get("spec") or {})
        if spec is None:
            raw_steps = (body.get("spec") or {}).get("steps")
            status = invalid_status(
                generation, errors, step_count=len(raw_steps) if isinstance(raw_steps, list) else 0, now=now, previous=previous
            )
            warnings: list[Event] = []
            old_degraded = _condition(previous, "Degraded")
            if old_degraded.get("reason") != "InvalidSpec" or old_degraded.get("message") != status.conditions[2].message:
                warnings.append(Event("Warning", "InvalidSpec", status.conditions[2].message))
            return Outcome(status=status, events=warnings, errors=errors)

        events: list[Event] = []
        existing = self._observe(owner)
        desired = render_children(owner, spec, self.default_image)
        desired_keys = {child_key(obj) for obj in desired}
        stored: dict[ChildKey, dict[str, Any]] = {}
        for obj in desired:
            key = child_key(obj)
            before = existing.get(key)
            stored[key] = self.cluster.apply(obj)
            if before is None and old_status.get("observedGeneration"):
                events.append(Event("Normal", "Created", f"created {_describe_child(obj)}"))
            elif before is not None and obj["kind"] == "Deployment":
                was, now_replicas = (before.get("spec") or {}).get("replicas"), obj["spec"]["replicas"]
                if was != now_replicas:
                    events.append(Event("Normal", "Scaled", f"{_describe_child(obj)}: replicas {was} -> {now_replicas}"))
        for key, obj in existing.items():
            if key not in desired_keys:
                if self.cluster.delete(str(obj["apiVersion"]), key[0], owner.namespace, key[1]):
                    events.append(Event("Normal", "Deleted", f"deleted {_describe_child(obj)}: no longer in the spec"))

        deployments = {
            key[1]: DeploymentState.from_object(obj) for key, obj in stored.items() if key[0] == "Deployment"
        }
        status = compute_status(owner.name, owner.namespace, generation, spec, deployments, now=now, previous=previous)
        old_ready = _condition(previous, "Ready")
        new_ready = status.conditions[0]
        if old_ready.get("status") != new_ready.status or old_ready.get("reason") != new_ready.reason:
            kind: Literal["Normal", "Warning"] = "Normal" if new_ready.status == "True" or new_ready.reason == "StepsNotReady" else "Warning"
            events.append(Event(kind, "Ready" if new_ready.status == "True" else new_ready.reason, new_ready.message))
        return Outcome(status=status, events=events)

    def _observe(self, owner: Owner) -> dict[ChildKey, dict[str, Any]]:
        """The pipeline's current children (by label, and owned by this very object)."""
        found: dict[ChildKey, dict[str, Any]] = {}
        for api_version, kind in CHILD_KINDS:
            for obj in self.cluster.list(api_version, kind, owner.namespace, child_selector(owner.name)):
                if _owned_by(obj, owner.uid):
                    found[child_key(obj)] = obj
        return found
