"""Fixtures and helpers for operator tests on the real API server: CRD, namespaces, a running operator, polling.

Import the fixtures you use explicitly (``from tests.support.operator_fixtures import kube, operator, ...``).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from conveyor_operator.cluster import Cluster
from conveyor_operator.config import OperatorConfig
from conveyor_operator.crd import CRD_FILENAME, PLURAL
from conveyor_operator.handlers import build_registry
from conveyor_runtime.errors import InvalidManifest
from conveyor_runtime.spec import API_GROUP, API_VERSION, parse_manifest

__all__ = [
    "RECONCILE_INTERVAL",
    "TEST_IMAGE",
    "Kube",
    "kube",
    "namespace",
    "operator",
    "pipeline_body",
    "pipeline_crd",
    "running_operator",
    "wait_for",
]

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_IMAGE = "conveyor:test"
#: Short, so that repairs and status updates show within a few seconds.
RECONCILE_INTERVAL = 1.0
WAIT_TIMEOUT = 45.0
#: A resync interval far longer than any wait in the tests, so only the watches can explain what they see.
NO_RESYNC_S = 3600.0
#: How long a watch-driven change may take to show.
WATCH_TIMEOUT_S = 20.0


def wait_for(check: Callable[[], T | None], what: str, timeout: float = WAIT_TIMEOUT, interval: float = 0.25) -> T:
    """Poll `check` until it returns something truthy (returned); fail naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


class Kube:
    """Typed API clients for one control plane, plus the few calls the tests repeat."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.extensions = client.ApiextensionsV1Api(api_client)

    # --- pipelines ---
    def create_pipeline(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, body)
        return result

    def get_pipeline(self, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)
        return result

    def find_pipeline(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The pipeline, or None once it is gone."""
        try:
            return self.get_pipeline(namespace, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete_pipeline(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)

    def release_pipelines(self, namespace: str) -> None:
        """Drop every finalizer from the namespace's pipelines, so that deleting the namespace never hangs on them."""
        for item in self.custom.list_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL)["items"]:
            if item["metadata"].get("finalizers"):
                self.custom.patch_namespaced_custom_object(
                    API_GROUP, API_VERSION, namespace, PLURAL, item["metadata"]["name"], {"metadata": {"finalizers": None}},
                    _content_type="application/merge-patch+json",
                )

    def patch_pipeline(self, namespace: str, name: str, patch: Any) -> dict[str, Any]:
        """JSON patch (a list of operations) of a pipeline."""
        result: dict[str, Any] = self.custom.patch_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, PLURAL, name, patch, _content_type="application/json-patch+json"
        )
        return result

    def condition(self, namespace: str, name: str, type_: str) -> dict[str, Any]:
        status = self.get_pipeline(namespace, name).get("status") or {}
        return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})

    # --- children ---
    def deployment(self, namespace: str, name: str) -> Any | None:
        try:
            return self.apps.read_namespaced_deployment(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def names(self, namespace: str, kind: str, selector: str) -> set[str]:
        if kind == "Deployment":
            items = self.apps.list_namespaced_deployment(namespace, label_selector=selector).items
        elif kind == "Service":
            items = self.core.list_namespaced_service(namespace, label_selector=selector).items
        elif kind == "ConfigMap":
            items = self.core.list_namespaced_config_map(namespace, label_selector=selector).items
        else:
            raise ValueError(kind)
        return {item.metadata.name for item in items if item.metadata.deletion_timestamp is None}

    def events(self, namespace: str, name: str) -> list[Any]:
        items: list[Any] = self.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
        return items

    def make_ready(self, namespace: str, name: str, *, controllers: bool) -> None:
        """Make a Deployment report every replica ready: through its pods when controllers run, else directly."""
        if controllers:
            _make_ready_with_pods(self, namespace, name)
        else:
            self.set_deployment_ready(namespace, name)

    def set_deployment_ready(self, namespace: str, name: str) -> None:
        """Mark every replica of a Deployment ready, as kubelets would (status subresource; no controller-manager)."""
        deployment = self.apps.read_namespaced_deployment(name, namespace)
        replicas = deployment.spec.replicas
        now = _now()
        status = {
            "observedGeneration": deployment.metadata.generation,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "test",
                 "lastUpdateTime": now, "lastTransitionTime": now},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "message": "test",
                 "lastUpdateTime": now, "lastTransitionTime": now},
            ],
        }
        self.apps.patch_namespaced_deployment_status(name, namespace, {"status": status})


FAKE_NODE = "conveyor-fake-node"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _make_ready_with_pods(kube: Kube, namespace: str, name: str) -> None:
    """With a controller-manager (no scheduler, no kubelet): bind the Deployment's pods to a fake node, mark them ready."""
    try:
        kube.core.create_node({"metadata": {"name": FAKE_NODE}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    now = _now()
    kube.core.patch_node_status(
        FAKE_NODE,
        {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test",
                                    "lastHeartbeatTime": now, "lastTransitionTime": now}]}},
    )
    deployment = kube.apps.read_namespaced_deployment(name, namespace)
    selector = ",".join(f"{k}={v}" for k, v in deployment.spec.selector.match_labels.items())

    def pods() -> list[Any]:
        found = [p for p in kube.core.list_namespaced_pod(namespace, label_selector=selector).items
                 if p.metadata.deletion_timestamp is None]
        return found if len(found) == deployment.spec.replicas else []

    for pod in wait_for(pods, f"{deployment.spec.replicas} pod(s) of {name}"):
        if not pod.spec.node_name:
            binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod.metadata.name},
                       "target": {"apiVersion": "v1", "kind": "Node", "name": FAKE_NODE}}
            kube.core.create_namespaced_pod_binding(pod.metadata.name, namespace, binding, _preload_content=False)
        conditions = [{"type": t, "status": "True", "lastTransitionTime": now}
                      for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
        kube.core.patch_namespaced_pod_status(
            pod.metadata.name, namespace, {"status": {"phase": "Running", "conditions": conditions, "startTime": now}}
        )


def api_refusal(kube: Kube, namespace: str, body: dict[str, Any], status: int = 422, **kwargs: Any) -> str:
    """The API server's message for a pipeline it must refuse with `status`."""
    with pytest.raises(ApiException) as caught:
        kube.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, body, **kwargs)
    assert caught.value.status == status, caught.value.body
    message: str = json.loads(caught.value.body)["message"]
    return message


def model_errors(body: dict[str, Any]) -> dict[str, str]:
    """The spec model's errors (field path -> message) for a pipeline it must refuse."""
    with pytest.raises(InvalidManifest) as caught:
        parse_manifest(body)
    return {e.path: e.message for e in caught.value.errors}


def pipeline_body(name: str, *steps: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """An InferencePipeline object (ops only by default: nothing to download or build)."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "InferencePipeline",
        "metadata": {"name": name},
        "spec": {"steps": list(steps), **spec},
    }


@pytest.fixture(scope="session")
def kube(control_plane: Any) -> Iterator[Kube]:
    """API clients for the session's control plane (KUBECONFIG already points at it)."""
    api_client = config.new_client_from_config(config_file=str(control_plane.kubeconfig_path))
    try:
        yield Kube(api_client)
    finally:
        api_client.close()


@pytest.fixture(scope="session")
def pipeline_crd(kube: Kube) -> dict[str, Any]:
    """The committed CRD, installed and Established."""
    crd: dict[str, Any] = yaml.safe_load((REPO_ROOT / "crds" / CRD_FILENAME).read_text())
    name = crd["metadata"]["name"]
    try:
        kube.extensions.create_custom_resource_definition(crd)
    except ApiException as exc:
        if exc.status != 409:
            raise
    def established() -> bool:
        found = kube.extensions.read_custom_resource_definition(name)
        return any(c.type == "Established" and c.status == "True" for c in found.status.conditions or [])

    wait_for(established, f"CRD {name} to be Established", timeout=30)
    return crd


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    """A fresh namespace per test (deleted afterwards without waiting; a test's leftover finalizers are dropped first)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        try:
            kube.release_pipelines(name)
            kube.core.delete_namespace(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


@contextlib.contextmanager
def running_operator(
    reconcile_interval: float, cluster_factory: Callable[[], Cluster] = Cluster.connect
) -> Iterator[KopfRunner]:
    """The real operator (kopf, cluster-wide) in a thread; checks on exit that it stopped cleanly.

    `cluster_factory` makes its API client: tests may pass one that records or holds calls.
    """
    config = OperatorConfig(image=TEST_IMAGE, reconcile_interval=reconcile_interval)
    registry = build_registry(config, cluster_factory=cluster_factory)
    runner = KopfRunner(["run", "--standalone", "--all-namespaces", "--verbose"], registry=registry, timeout=60)
    with runner:
        yield runner
    assert runner.exit_code == 0, runner.output[-4000:]
    assert runner.exception is None


@pytest.fixture(scope="module")
def operator(pipeline_crd: dict[str, Any]) -> Iterator[KopfRunner]:
    """The real operator with a 1 s resync, for the whole module."""
    with running_operator(RECONCILE_INTERVAL) as runner:
        yield runner
