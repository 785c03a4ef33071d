"""The operator's lifecycle on a real API server: no finalizers, one reconcile at a time per pipeline, and no
status written from a stale read.

Each test runs its own operator (if any) with a resync far longer than the test, so only watches explain what
happens.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conveyor_operator.cluster import Cluster
from conveyor_operator.controller import PipelineController
from conveyor_operator.labels import PIPELINE_LABEL
from conveyor_operator.reconciler import Reconciler
from conveyor_operator.workqueue import Retry
from conveyor_runtime.spec import API_GROUP
from tests.support.operator_fixtures import (  # noqa: F401 - fixtures
    NO_RESYNC_S,
    TEST_IMAGE,
    WAIT_TIMEOUT,
    Kube,
    kube,
    namespace,
    pipeline_body,
    pipeline_crd,
    running_operator,
    wait_for,
)

pytestmark = pytest.mark.controlplane


def _observed(kube: Kube, namespace: str, name: str) -> int:
    return int((kube.get_pipeline(namespace, name).get("status") or {}).get("observedGeneration") or 0)


def test_operator_adds_no_finalizer_so_deletion_completes_with_the_operator_stopped(
    kube: Kube, namespace: str, pipeline_crd: Any
) -> None:
    with running_operator(NO_RESYNC_S):
        kube.create_pipeline(namespace, pipeline_body("gone", {"name": "pre", "op": "identity"}))
        wait_for(lambda: _observed(kube, namespace, "gone") == 1, "the operator to reconcile 'gone'")
        assert not kube.get_pipeline(namespace, "gone")["metadata"].get("finalizers")

    kube.delete_pipeline(namespace, "gone")
    wait_for(lambda: kube.find_pipeline(namespace, "gone") is None, "'gone' to be deleted while no operator runs")


def test_operator_removes_the_finalizer_an_older_version_added(kube: Kube, namespace: str, pipeline_crd: Any) -> None:
    body = pipeline_body("legacy", {"name": "pre", "op": "identity"})
    body["metadata"]["finalizers"] = [f"{API_GROUP}/finalizer"]
    kube.create_pipeline(namespace, body)

    with running_operator(NO_RESYNC_S):
        wait_for(
            lambda: not kube.get_pipeline(namespace, "legacy")["metadata"].get("finalizers"),
            "the operator to remove the finalizer its older versions added",
        )
        wait_for(lambda: _observed(kube, namespace, "legacy") == 1, "the operator to reconcile 'legacy'")


class HeldCluster(Cluster):
    """The operator's API client, able to hold one reconcile in its first apply (with the pipeline it read)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._armed = ""
        self.held = threading.Event()
        self.release = threading.Event()

    def hold_next_apply(self, pipeline: str) -> None:
        with self._lock:
            self._armed = pipeline

    def apply(self, obj: Any) -> dict[str, Any]:
        with self._lock:
            hold = bool(self._armed) and obj["metadata"]["labels"].get(PIPELINE_LABEL) == self._armed
            if hold:
                self._armed = ""
        if hold:
            self.held.set()
            self.release.wait(WAIT_TIMEOUT)
        return super().apply(obj)


class Deferrals(logging.Handler):
    """Sets `seen` when the operator queues a change of `pipeline` behind a reconcile of it that is running."""

    def __init__(self, pipeline: str) -> None:
        super().__init__(logging.DEBUG)
        self.pipeline = pipeline
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if f"/{self.pipeline}:" in message and "InferencePipeline" in message and "runs again" in message:
            self.seen.set()


@pytest.fixture
def deferrals() -> Iterator[Deferrals]:
    handler = Deferrals("raced")
    logger = logging.getLogger("conveyor_operator")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_operator_runs_one_reconcile_at_a_time_per_pipeline(
    kube: Kube, namespace: str, pipeline_crd: Any, deferrals: Deferrals
) -> None:
    made: list[HeldCluster] = []

    def factory() -> Cluster:
        made.append(HeldCluster.connect())
        return made[-1]

    with running_operator(NO_RESYNC_S, cluster_factory=factory):
        kube.create_pipeline(namespace, pipeline_body("raced", {"name": "pre", "op": "identity"}, {"name": "post", "op": "identity"}))
        wait_for(lambda: _observed(kube, namespace, "raced") == 1, "the first reconcile of 'raced'")
        cluster = made[0]
        try:
            # A hand edit of a child starts a reconcile, held with generation 1 in hand; then the spec changes.
            cluster.hold_next_apply("raced")
            kube.core.patch_namespaced_config_map("raced-graph", namespace, {"metadata": {"annotations": {"test/touch": "1"}}})
            assert cluster.held.wait(WAIT_TIMEOUT), "no reconcile followed the hand edit of raced-graph"
            kube.patch_pipeline(namespace, "raced", [{"op": "add", "path": "/spec/steps/-", "value": {"name": "extra", "op": "identity"}}])

            wait_for(
                lambda: deferrals.seen.is_set() or _observed(kube, namespace, "raced") == 2,
                "the spec change to be queued behind the held reconcile (or reconciled beside it)",
            )
            assert _observed(kube, namespace, "raced") == 1, "a second reconcile of 'raced' ran beside the held one"
        finally:
            cluster.release.set()

        def settled() -> dict[str, Any] | None:
            status = kube.get_pipeline(namespace, "raced").get("status") or {}
            steps = [s["name"] for s in status.get("steps") or []]
            generations = {c.get("observedGeneration") for c in status.get("conditions") or []}
            return status if status.get("observedGeneration") == 2 and steps == ["pre", "post", "extra"] and generations == {2} else None

        status = wait_for(settled, "status to describe generation 2 throughout")
        assert status["stepCount"] == 3
        assert "raced-extra" in kube.names(namespace, "Deployment", f"{PIPELINE_LABEL}=raced")


class MeddledCluster(Cluster):
    """An API client that runs `meddle` once, at its next call named by `meddle_at` (method, kind): after a read,
    before a write. It stands for someone else acting in between."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.meddle_at = ("", "")
        self.meddle: Callable[[], None] | None = None

    def _at(self, method: str, kind: str) -> None:
        meddle = self.meddle
        if meddle is not None and (method, kind) == self.meddle_at:
            self.meddle = None
            meddle()

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        found = super().list(api_version, kind, namespace, label_selector)
        self._at("list", kind)
        return found

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, *args: Any) -> None:
        self._at("patch_status", kind)
        super().patch_status(api_version, kind, namespace, name, *args)


def _synced(controller: PipelineController, key: tuple[str, str]) -> bool:
    """One sync; False when it asks to be run again (e.g. a Deployment changed under it: the controller-manager)."""
    try:
        controller.sync(key)
    except Retry:
        return False
    return True


def _steps_and_generations(status: dict[str, Any]) -> tuple[list[str], set[int]]:
    return [s["name"] for s in status.get("steps") or []], {c["observedGeneration"] for c in status.get("conditions") or []}


def test_controller_never_writes_status_from_a_stale_read(kube: Kube, namespace: str, pipeline_crd: Any) -> None:
    """The spec changes and a newer status lands after our read, before our status write: ours must not land."""
    kube.create_pipeline(namespace, pipeline_body("stale", {"name": "pre", "op": "identity"}))
    key = (namespace, "stale")
    cluster = MeddledCluster(kube.api_client)

    def newer_spec_reconciled() -> None:
        kube.patch_pipeline(namespace, "stale", [{"op": "add", "path": "/spec/steps/-", "value": {"name": "extra", "op": "identity"}}])
        wait_for(lambda: _synced(PipelineController(Cluster(kube.api_client), TEST_IMAGE), key), "the other reconcile")

    cluster.meddle_at, cluster.meddle = ("patch_status", "InferencePipeline"), newer_spec_reconciled
    with pytest.raises(Retry) as retry:
        PipelineController(cluster, TEST_IMAGE).sync(key)  # reads and reconciles generation 1

    assert retry.value.delay == 0, retry.value
    status = kube.get_pipeline(namespace, "stale")["status"]
    assert status["observedGeneration"] == 2 and _steps_and_generations(status) == (["pre", "extra"], {2})

    wait_for(lambda: _synced(PipelineController(cluster, TEST_IMAGE), key), "the retry, from a fresh read")
    status = kube.get_pipeline(namespace, "stale")["status"]
    assert status["observedGeneration"] == 2 and _steps_and_generations(status) == (["pre", "extra"], {2})


def test_reconciler_puts_back_a_hand_edit_made_after_it_looked_and_says_so(
    kube: Kube, namespace: str, pipeline_crd: Any
) -> None:
    """A child changed between the reconciler's look and its apply is not overwritten unseen: that apply is refused
    (409); the child is read again and the edit put back, with a Reverted event."""
    kube.create_pipeline(namespace, pipeline_body("edited", {"name": "pre", "op": "identity"}))
    cluster = MeddledCluster(kube.api_client)
    reconciler = Reconciler(cluster, default_image=TEST_IMAGE)
    assert not reconciler.reconcile(kube.get_pipeline(namespace, "edited")).retry
    rendered = _env(kube.deployment(namespace, "edited-pre"))["CONVEYOR_MAX_BATCH_SIZE"]
    env = [{"name": "CONVEYOR_MAX_BATCH_SIZE", "value": "1000"}]

    def set_env_by_hand() -> None:
        kube.apps.patch_namespaced_deployment(
            "edited-pre", namespace, {"spec": {"template": {"spec": {"containers": [{"name": "step", "env": env}]}}}}
        )

    cluster.meddle_at, cluster.meddle = ("list", "Deployment"), set_env_by_hand
    outcome = reconciler.reconcile(kube.get_pipeline(namespace, "edited"))
    assert cluster.meddle is None, "the hand edit was never made"
    events = list(outcome.events)
    for _ in range(5):  # the controller-manager may outpace every re-read; the controller then runs it again
        if not outcome.retry:
            break
        outcome = reconciler.reconcile(kube.get_pipeline(namespace, "edited"))
        events += outcome.events
    assert not outcome.retry, outcome.retry
    assert _env(kube.deployment(namespace, "edited-pre"))["CONVEYOR_MAX_BATCH_SIZE"] == rendered
    [reverted] = [e for e in events if e.reason == "Reverted"]
    assert f"'1000' was set by hand and is put back to {rendered!r}" in reverted.message, reverted.message
    assert "spec.steps[0].batching.maxBatchSize" in reverted.message, reverted.message


def _env(deployment: Any) -> dict[str, str]:
    return {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}
