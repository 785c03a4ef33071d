"""kopf wiring: every trigger of a pipeline (its own events, its children's, the resync) queues one reconcile.

Only event handlers are registered, none that needs a finalizer, so pipelines and their namespaces delete
whether the operator runs or not. `build_registry(config)` registers them on a fresh registry, so that tests
can pick the resync interval and the API client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from conveyor_runtime.spec import API_GROUP, API_VERSION, KIND

from .cluster import Cluster
from .config import OperatorConfig
from .controller import PipelineController
from .crd import PLURAL
from .labels import MANAGED_BY, PIPELINE_LABEL
from .workqueue import Key, ReconcileQueue

__all__ = ["RESOURCE", "build_registry", "configure_settings"]

RESOURCE = (API_GROUP, API_VERSION, PLURAL)
#: The kinds of children whose changes (status, hand edits, deletion) trigger a reconcile of their pipeline.
CHILD_RESOURCES: tuple[tuple[str, ...], ...] = (("apps", "v1", "deployments"), ("v1", "services"), ("v1", "configmaps"))
#: Pipelines reconciled at once (each one by one thread; the calls wait on the API server, not the CPU).
RECONCILE_THREADS = 4


def configure_settings(settings: kopf.OperatorSettings) -> None:
    """One replica, quiet Events, bounded watches; the finalizer is named so that kopf removes older versions' one."""
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.peering.standalone = True  # one replica (the chart's Deployment uses the Recreate strategy)
    settings.posting.level = logging.WARNING  # Events come from explicit transitions, not every log line
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30


def _owning_pipeline(child: Mapping[str, Any]) -> str | None:
    """The name of the InferencePipeline that owns `child`, if any."""
    for reference in (child.get("metadata") or {}).get("ownerReferences") or []:
        if reference.get("kind") == KIND and str(reference.get("apiVersion", "")).startswith(f"{API_GROUP}/"):
            return str(reference["name"])
    return None


def _key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta["name"])


def build_registry(config: OperatorConfig, cluster_factory: Callable[[], Cluster] = Cluster.connect) -> kopf.OperatorRegistry:
    """A registry with the operator's handlers; `conveyor operator` and the tests run it with kopf."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
        configure_settings(settings)
        loop = asyncio.get_running_loop()
        executor = memo.executor = ThreadPoolExecutor(RECONCILE_THREADS, thread_name_prefix="conveyor-reconcile")
        memo.cluster = await loop.run_in_executor(executor, cluster_factory)
        controller = PipelineController(memo.cluster, default_image=config.image)

        async def work(key: Key) -> None:
            await loop.run_in_executor(executor, controller.sync, key)

        memo.queue = ReconcileQueue(work)
        memo.queue.start_resync(config.reconcile_interval)
        logger.info(
            "conveyor operator: image %s, resync every %ss, namespaces %s",
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
    async def stop(memo: kopf.Memo, **_: Any) -> None:
        queue: ReconcileQueue | None = memo.get("queue")
        if queue is not None:
            await queue.aclose()
        executor: ThreadPoolExecutor | None = memo.get("executor")
        if executor is not None:  # a call in flight ends within the API request timeout
            await asyncio.to_thread(executor.shutdown)
        cluster: Cluster | None = memo.get("cluster")
        if cluster is not None:
            cluster.close()

    @kopf.on.event(*RESOURCE, registry=registry)
    async def pipeline_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        """Listed, created or its spec changed: reconcile. Only its status or metadata changed: nothing to do."""
        key = _key(body)
        if type == "DELETED":
            memo.queue.forget(key)
            return
        meta, status = body.get("metadata") or {}, body.get("status") or {}
        if type == "MODIFIED" and status.get("observedGeneration") == meta.get("generation"):
            memo.queue.track(key)  # e.g. our own status write
            return
        memo.queue.enqueue(key, f"InferencePipeline {type or 'listed'}")

    async def child_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        """A child changed or went away: reconcile its pipeline, so status follows the Deployments and a hand-deleted
        or hand-edited child comes back at once rather than at the next resync."""
        if type is None:  # the initial listing; the pipelines' own listing covers it
            return
        owner = _owning_pipeline(body)
        if owner is not None:
            namespace, name = _key(body)
            memo.queue.enqueue((namespace, owner), f"{body.get('kind')} {name} {type}")

    for resource in CHILD_RESOURCES:
        kopf.on.event(*resource, labels={"app.kubernetes.io/managed-by": MANAGED_BY}, registry=registry)(child_changed)

    @kopf.on.event("v1", "pods", labels={"app.kubernetes.io/managed-by": MANAGED_BY}, registry=registry)
    async def pod_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        """A step's or the gateway's pod changed (a container crashed, started, became ready): reconcile its pipeline
        (named by its label; ReplicaSets own the pods), so that a step that cannot start turns it Degraded at once."""
        pipeline = ((body.get("metadata") or {}).get("labels") or {}).get(PIPELINE_LABEL)
        if type is not None and pipeline:
            namespace, name = _key(body)
            memo.queue.enqueue((namespace, str(pipeline)), f"Pod {name} {type}")

    return registry
