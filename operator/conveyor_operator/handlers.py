"""kopf handlers for InferencePipelines: reconcile on create/update/resume, when a child changes, and on a timer.

`build_registry(config)` registers them on a fresh registry, so that tests can pick a short timer interval.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from conveyor_runtime.spec import API_GROUP, API_VERSION, KIND

from .cluster import Cluster
from .config import OperatorConfig
from .crd import PLURAL
from .labels import MANAGED_BY
from .reconciler import Outcome, Reconciler

__all__ = ["RESOURCE", "build_registry", "configure_settings"]

RESOURCE = (API_GROUP, API_VERSION, PLURAL)
PIPELINE_API_VERSION = f"{API_GROUP}/{API_VERSION}"
#: The kinds of children whose changes (status, hand edits, deletion) trigger a reconcile of their pipeline.
CHILD_RESOURCES: tuple[tuple[str, ...], ...] = (("apps", "v1", "deployments"), ("v1", "services"), ("v1", "configmaps"))


def configure_settings(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    """Annotations (not status) keep kopf's bookkeeping, so the status schema stays exactly ours."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.peering.standalone = True  # one replica (the chart's Deployment uses the Recreate strategy)
    settings.posting.level = logging.WARNING  # Events come from explicit transitions, not every log line
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.execution.max_workers = 8


def _status_patch(outcome: Outcome, current: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of status that change (None deletes a field in a merge patch); {} when nothing does."""
    new = outcome.status.model_dump(mode="json")
    return {key: value for key, value in new.items() if current.get(key) != value}


def _write(outcome: Outcome, body: kopf.Body, patch: kopf.Patch) -> None:
    changes = _status_patch(outcome, body.get("status") or {})
    for key, value in changes.items():
        patch.status[key] = value
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def _owning_pipeline(child: Mapping[str, Any]) -> tuple[str, str] | None:
    """(name, uid) of the InferencePipeline that owns `child`, if any."""
    for reference in (child.get("metadata") or {}).get("ownerReferences") or []:
        if reference.get("kind") == KIND and str(reference.get("apiVersion", "")).startswith(f"{API_GROUP}/"):
            return str(reference["name"]), str(reference.get("uid", ""))
    return None


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """A registry with the operator's handlers; `conveyor operator` and the tests run it with kopf."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def connect(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
        configure_settings(settings, config)
        memo.cluster = Cluster.connect()
        memo.reconciler = Reconciler(memo.cluster, default_image=config.image)
        logger.info(
            "conveyor operator: image %s, reconcile every %ss, namespaces %s",
            config.image,
            config.reconcile_interval,
            ", ".join(config.namespaces) or "all",
        )

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """A custom registry gets no default login: service account, else $KUBECONFIG as of now, else the client's."""
        info: kopf.ConnectionInfo | None = (
            kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs) or kopf.login_via_client(**kwargs)
        )
        return info

    @kopf.on.cleanup(registry=registry)
    def disconnect(memo: kopf.Memo, **_: Any) -> None:
        cluster = getattr(memo, "cluster", None)
        if cluster is not None:
            cluster.close()

    @kopf.on.resume(*RESOURCE, registry=registry)
    @kopf.on.create(*RESOURCE, registry=registry)
    @kopf.on.update(*RESOURCE, field="spec", registry=registry)
    def reconcile(body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
        """On a spec change: reconcile now; a bad spec is permanent until the spec changes again."""
        outcome = memo.reconciler.reconcile(body)
        _write(outcome, body, patch)
        if outcome.errors:
            message = "; ".join(str(e) for e in outcome.errors)
            logger.error("invalid spec, nothing applied: %s", message)
            raise kopf.PermanentError(f"invalid spec: {message}")
        logger.info("reconciled: %s", outcome.status.conditions[0].message)

    @kopf.timer(*RESOURCE, interval=config.reconcile_interval, initial_delay=config.reconcile_interval, registry=registry)
    def resync(body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
        """Level-based resync: puts back hand-edited or deleted children and follows the Deployments' status."""
        outcome = memo.reconciler.reconcile(body)
        _write(outcome, body, patch)
        for event in outcome.events:
            logger.info("%s: %s", event.reason, event.message)

    def child_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
        """A child changed or went away: reconcile its pipeline now, so status follows the Deployments and a
        hand-deleted or hand-edited child comes back at once rather than at the next resync."""
        if type is None:  # the initial listing; the pipelines' own resume handlers cover it
            return
        owner = _owning_pipeline(body)
        namespace = body.get("metadata", {}).get("namespace") or "default"
        if owner is None:
            return
        pipeline = memo.cluster.get(PIPELINE_API_VERSION, KIND, namespace, owner[0])
        meta = (pipeline or {}).get("metadata") or {}
        if pipeline is None or meta.get("uid") != owner[1] or meta.get("deletionTimestamp"):
            return
        outcome = memo.reconciler.reconcile(pipeline)
        if outcome.errors:  # an invalid spec is reported by the pipeline's own handlers
            return
        changes = _status_patch(outcome, pipeline.get("status") or {})
        if changes:
            memo.cluster.patch_status(PIPELINE_API_VERSION, KIND, namespace, owner[0], changes)
        for event in outcome.events:
            kopf.event(pipeline, type=event.type, reason=event.reason, message=event.message)
        logger.debug("reconciled %s/%s after a %s of %s", namespace, owner[0], type, body.get("kind"))

    for resource in CHILD_RESOURCES:
        kopf.on.event(*resource, labels={"app.kubernetes.io/managed-by": MANAGED_BY}, registry=registry)(child_changed)

    return registry
