"""One level-based reconcile of an InferencePipeline: validate, apply the children, prune the rest, compute status.

Nothing is applied unless the whole spec is valid, so an invalid graph never leaves half-built children. Each
child is applied only over the version observed (else 409), so the events say exactly what a run changed; on a
conflict (someone else wrote it since: a hand edit, or the controller-manager's status) the child is read again and
applied once more over that version. A child
the API server refuses (a 4xx: admission, quota, validation) is reported in status; one it did not answer (or a
5xx, a conflict) is listed in `Outcome.retry` for the caller to try again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from conveyor_runtime.errors import FieldError
from conveyor_runtime.spec import (
    BATCHING_ENV,
    IN_PROCESS_STEPS_ENV,
    PipelineSpec,
    gateway_resource_name,
    graph_errors,
    step_resource_name,
    validation_field_errors,
)

from .cluster import CHILD_KINDS, POD_KIND, ChildKey, ClusterError, child_key
from .labels import COMPONENT_LABEL, DEFAULT_IMAGE, FIELD_MANAGER, REPLICAS_HANDOVER_MANAGER, STEP_LABEL, child_selector
from .render import Owner, name_errors, render_children
from .status import DeploymentState, PipelineStatus, compute_status, invalid_status

__all__ = ["ClusterAPI", "Event", "Outcome", "Reconciler", "utc_now", "validate_spec"]

logger = logging.getLogger(__name__)

#: Applies of one child per run when each finds it changed since it was read (409); then the run is retried.
CONFLICT_ATTEMPTS = 4


class ClusterAPI(Protocol):
    """What the reconciler needs from the API (cluster.Cluster; tests may pass a fake)."""

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]: ...

    def apply_as(self, obj: Mapping[str, Any], field_manager: str) -> dict[str, Any]: ...

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]: ...

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool: ...


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the pipeline: about a change of its status (`transition`), or an action taken."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    transition: bool = False


@dataclass
class Outcome:
    """What one reconcile found: the status to write, events to post, for a bad spec its errors, and the children
    to try again (no answer, a 5xx, a conflict)."""

    status: PipelineStatus
    events: list[Event] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)
    retry: list[str] = field(default_factory=list)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def _why_pruned(spec: PipelineSpec, obj: Mapping[str, Any]) -> str:
    """Why a child is no longer rendered: gone from the spec, or (a Deployment) its step now runs in another's pods."""
    step = ((obj.get("metadata") or {}).get("labels") or {}).get(STEP_LABEL)
    host = next((s.inProcessWith for s in spec.steps if s.name == step), None)
    if host is not None and obj.get("kind") == "Deployment":
        return f"step {step!r} now runs in the pods of step {host!r} (inProcessWith)"
    return "no longer in the spec"


def _over(obj: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, Any]:
    """`obj`, to be applied only over `before` as observed (else 409): the events then say what was really changed."""
    return {**obj, "metadata": {**obj["metadata"], "resourceVersion": before["metadata"]["resourceVersion"]}}


def _env_set_by_others(deployment: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(container, variable) of the env values another field manager owns: `kubectl set env`, `kubectl edit`, ..."""
    owned: set[tuple[str, str]] = set()
    for entry in (deployment.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == FIELD_MANAGER:
            continue
        pod = (((entry.get("fieldsV1") or {}).get("f:spec") or {}).get("f:template") or {}).get("f:spec") or {}
        for container_key, container in (pod.get("f:containers") or {}).items():
            for env_key, env in ((container or {}).get("f:env") or {}).items():
                if container_key.startswith("k:") and env_key.startswith("k:") and "f:value" in (env or {}):
                    owned.add((json.loads(container_key[2:])["name"], json.loads(env_key[2:])["name"]))
    return owned


def _containers(deployment: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    containers: list[Mapping[str, Any]] = ((deployment.get("spec") or {}).get("template") or {}).get("spec", {}).get(
        "containers"
    ) or []
    return containers


def _hand_set_env(before: Mapping[str, Any], desired: Mapping[str, Any]) -> list[tuple[str, str | None, str]]:
    """(variable, value found, value rendered) for each env value someone else changed on a Deployment we render."""
    others = _env_set_by_others(before)
    found = {str(c.get("name")): {e.get("name"): e.get("value") for e in c.get("env") or []} for c in _containers(before)}
    changed = []
    for container in _containers(desired):
        current = found.get(str(container["name"]), {})
        for env in container.get("env") or []:
            name = env["name"]
            if (container["name"], name) in others and name in current and current[name] != env.get("value"):
                changed.append((str(name), current[name], str(env.get("value"))))
    return changed


def _field_for_env(spec: PipelineSpec, step: str | None, variable: str) -> str:
    """Where in the InferencePipeline the value of a step's env variable comes from."""
    index = next((i for i, s in enumerate(spec.steps) if s.name == step), None)
    if index is None:
        return "spec"
    if variable == IN_PROCESS_STEPS_ENV:  # the specs of the steps that run in this one's processes
        guests = [f"spec.steps[{i}]" for i, s in enumerate(spec.steps) if s.inProcessWith == step]
        return " or ".join(guests) or f"spec.steps[{index}]"
    batching = {var: name for name, var in BATCHING_ENV.items()}
    return f"spec.steps[{index}].batching.{batching[variable]}" if variable in batching else f"spec.steps[{index}]"


class Reconciler:
    """Brings one pipeline's children to its spec; safe to run again and again (server-side apply)."""

    def __init__(self, cluster: ClusterAPI, default_image: str = DEFAULT_IMAGE) -> None:
        self.cluster = cluster
        self.default_image = default_image
        self._pods_unlisted = False  # warned once that pods cannot be listed

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
                warnings.append(Event("Warning", "InvalidSpec", status.conditions[2].message, transition=True))
            return Outcome(status=status, events=warnings, errors=errors)

        events: list[Event] = []
        failures: list[str] = []
        retry: list[str] = []
        existing = self._observe(owner)
        desired = render_children(owner, spec, self.default_image)
        desired_keys = {child_key(obj) for obj in desired}
        stored: dict[ChildKey, dict[str, Any]] = {}
        for obj in desired:
            key = child_key(obj)
            before = existing.get(key)
            try:
                if before is not None and _is_external_step_deployment(spec, obj):
                    if _owns_replicas(before):
                        # Dropping a field this manager alone owns would reset it to its default (1 replica): a second
                        # manager takes the count over first, with the value it has now, so it is kept.
                        before = self.cluster.apply_as(_replicas_only(before), REPLICAS_HANDOVER_MANAGER)
                    obj = _without_replicas(obj)
                stored[key], before = self._apply(obj, before)
            except ClusterError as exc:
                if exc.namespace_terminating:
                    raise
                (retry if exc.temporary else failures).append(f"{_describe_child(obj)}: {exc.message}")
                if before is not None:
                    stored[key] = before
                continue
            events.extend(self._changes(spec, obj, before, created=before is None and bool(old_status.get("observedGeneration"))))
        for key, obj in existing.items():
            if key not in desired_keys:
                try:
                    deleted = self.cluster.delete(str(obj["apiVersion"]), key[0], owner.namespace, key[1])
                except ClusterError as exc:
                    (retry if exc.temporary else failures).append(f"{_describe_child(obj)}: cannot delete it: {exc.message}")
                    continue
                if deleted:
                    events.append(Event("Normal", "Deleted", f"deleted {_describe_child(obj)}: {_why_pruned(spec, obj)}"))

        pods = self._pods(owner)
        deployments = {
            key[1]: DeploymentState.from_object(obj, pods.get(key[1], ()))
            for key, obj in stored.items()
            if key[0] == "Deployment"
        }
        status = compute_status(
            owner.name, owner.namespace, generation, spec, deployments, now=now, previous=previous, apply_failures=failures
        )
        old_ready = _condition(previous, "Ready")
        new_ready = status.conditions[0]
        if old_ready.get("status") != new_ready.status or old_ready.get("reason") != new_ready.reason:
            kind: Literal["Normal", "Warning"] = (
                "Normal" if new_ready.status == "True" or new_ready.reason == "StepsNotReady" else "Warning"
            )
            reason = "Ready" if new_ready.status == "True" else new_ready.reason
            events.append(Event(kind, reason, new_ready.message, transition=True))
        return Outcome(status=status, events=events, retry=retry)

    @staticmethod
    def _changes(spec: PipelineSpec, obj: Mapping[str, Any], before: Mapping[str, Any] | None, *, created: bool) -> list[Event]:
        """Events for what applying `obj` over `before` did: created it, scaled it, or put back a hand edit."""
        if created:
            return [Event("Normal", "Created", f"created {_describe_child(obj)}")]
        if before is None or obj["kind"] != "Deployment":
            return []
        events = []
        was, replicas = (before.get("spec") or {}).get("replicas"), obj["spec"].get("replicas", before["spec"].get("replicas"))
        if was != replicas:
            events.append(Event("Normal", "Scaled", f"{_describe_child(obj)}: replicas {was} -> {replicas}"))
        step = (obj["metadata"].get("labels") or {}).get(STEP_LABEL)
        for variable, found, rendered in _hand_set_env(before, obj):
            events.append(
                Event(
                    "Warning",
                    "Reverted",
                    f"{_describe_child(obj)}: env {variable}={found!r} was set by hand and is put back to {rendered!r}; "
                    f"the InferencePipeline is the source of truth: edit {_field_for_env(spec, step, variable)} instead",
                )
            )
        return events

    def _apply(self, obj: Mapping[str, Any], before: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Apply `obj` over `before`; on a conflict, again over the child as it is now (the controller-manager writes
        a Deployment a few times after its template changes). Returns what was stored and the version it was applied
        over (None: created)."""
        meta = obj["metadata"]
        for _ in range(CONFLICT_ATTEMPTS - 1):
            try:
                return self.cluster.apply(obj if before is None else _over(obj, before)), before
            except ClusterError as exc:
                if exc.status != 409 or before is None:
                    raise
            before = self.cluster.get(str(obj["apiVersion"]), str(obj["kind"]), str(meta["namespace"]), str(meta["name"]))
        return self.cluster.apply(obj if before is None else _over(obj, before)), before

    def _pods(self, owner: Owner) -> dict[str, list[dict[str, Any]]]:
        """The pipeline's pods by the name of their Deployment (from their labels); none when they cannot be listed
        (status then comes from the Deployments alone)."""
        try:
            pods = self.cluster.list(*POD_KIND, owner.namespace, child_selector(owner.name))
        except ClusterError as exc:
            logger.log(
                logging.DEBUG if self._pods_unlisted else logging.WARNING,
                "%s/%s: cannot list its pods (%s); a step that cannot start shows only as not ready",
                owner.namespace,
                owner.name,
                exc,
            )
            self._pods_unlisted = True
            return {}
        found: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            labels = (pod.get("metadata") or {}).get("labels") or {}
            step = labels.get(STEP_LABEL)
            deployment = step_resource_name(owner.name, step) if step else gateway_resource_name(owner.name)
            if labels.get(COMPONENT_LABEL) in ("step", "gateway"):
                found.setdefault(deployment, []).append(pod)
        return found

    def _observe(self, owner: Owner) -> dict[ChildKey, dict[str, Any]]:
        """The pipeline's current children (by label, and owned by this very object)."""
        found: dict[ChildKey, dict[str, Any]] = {}
        for api_version, kind in CHILD_KINDS:
            for obj in self.cluster.list(api_version, kind, owner.namespace, child_selector(owner.name)):
                if _owned_by(obj, owner.uid):
                    found[child_key(obj)] = obj
        return found


def _is_external_step_deployment(spec: PipelineSpec, obj: Mapping[str, Any]) -> bool:
    """A step Deployment whose replicas an autoscaler of the user's own sets (`externalAutoscaler`): the operator
    creates it with `replicas`, then applies it without `spec.replicas`, leaving the count to whoever wrote it last."""
    step_name = (obj["metadata"].get("labels") or {}).get(STEP_LABEL)
    return obj["kind"] == "Deployment" and step_name in {s.name for s in spec.steps if s.externalAutoscaler}


def _without_replicas(obj: dict[str, Any]) -> dict[str, Any]:
    return {**obj, "spec": {k: v for k, v in obj["spec"].items() if k != "replicas"}}


def _owns_replicas(deployment: Mapping[str, Any]) -> bool:
    """Whether the operator's own applies own `spec.replicas` (as after it created the Deployment)."""
    for entry in (deployment.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Apply":
            if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {}):
                return True
    return False


def _replicas_only(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """An apply of the Deployment's current replica count and nothing else."""
    meta = deployment["metadata"]
    return {
        "apiVersion": deployment.get("apiVersion", "apps/v1"),
        "kind": "Deployment",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        "spec": {"replicas": int((deployment.get("spec") or {}).get("replicas", 1))},
    }
