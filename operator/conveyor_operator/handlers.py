"""kopf handlers for InferencePipelines: reconcile on create/update/resume and on a timer, one status patch each.

`build_registry(config)` registers them on a fresh registry, so that tests can pick a short timer interval.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from conveyor_runtime.spec import API_GROUP, API_VERSION

from .cluster import Cluster
from .config import OperatorConfig
from .crd import PLURAL
from .reconciler import Outcome, Reconciler

__all__ = ["build_registry", "configure_settings", "RESOURCE"]

RESOURCE = (API_GROUP, API_VERSION, PLURAL)


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

    return registry
