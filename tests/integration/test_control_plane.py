"""Smoke tests proving the integration-test control plane is a real, working API server."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.support.control_plane import ControlPlane

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.controlplane

T = TypeVar("T")


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll ``fn`` until it returns a truthy value, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    api_client = control_plane.api_client()
    try:
        yield api_client
    finally:
        api_client.close()  # type: ignore[no-untyped-call, unused-ignore]


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"cp-test-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


def test_kubeconfig_env_points_at_control_plane(control_plane: ControlPlane) -> None:
    assert os.environ["KUBECONFIG"] == str(control_plane.kubeconfig_path)
    assert control_plane.server_url is not None
    assert control_plane.server_url.startswith("https://127.0.0.1:")
    # The default loader (as kopf/kubernetes use it) picks the test cluster up.
    default_client: client.ApiClient = config.new_client_from_config()  # type: ignore[no-untyped-call, unused-ignore]
    try:
        assert default_client.configuration.host == control_plane.server_url
        version = client.VersionApi(default_client).get_code()
        assert version.major == "1"
    finally:
        default_client.close()  # type: ignore[no-untyped-call, unused-ignore]


@pytest.mark.parametrize("login_name", ["login_via_client", "login_with_kubeconfig"])
def test_kopf_login_finds_control_plane(control_plane: ControlPlane, login_name: str) -> None:
    import kopf

    login = getattr(kopf, login_name)
    info = login(logger=logger, settings=kopf.OperatorSettings())
    assert info is not None
    assert info.server.rstrip("/") == control_plane.server_url
    assert info.token == control_plane.token


def test_configmap_roundtrip(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="greeting"), data={"hello": "world"}
        ),
    )
    read = core.read_namespaced_config_map("greeting", namespace)
    assert read.data == {"hello": "world"}
    assert read.metadata is not None and read.metadata.uid


def test_crd_becomes_established(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    group = "smoke.conveyor.invalid"
    plural = f"widgets{uuid.uuid4().hex[:6]}"
    kind = f"W{plural}"
    name = f"{plural}.{group}"
    crd: dict[str, Any] = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": kind},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                    "subresources": {"status": {}},
                }
            ],
        },
    }
    ext.create_custom_resource_definition(crd)  # type: ignore[arg-type, unused-ignore]
    try:

        def established() -> bool:
            status = ext.read_custom_resource_definition(name).status
            conditions = (status.conditions if status is not None else None) or []
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        wait_for(f"CRD {name} to be Established", established, timeout=30)

        custom = client.CustomObjectsApi(api)
        body = {
            "apiVersion": f"{group}/v1",
            "kind": kind,
            "metadata": {"name": "one"},
            "spec": {"size": 3},
        }

        def created() -> Any:
            try:
                return custom.create_namespaced_custom_object(group, "v1", "default", plural, body)
            except ApiException as exc:
                if exc.status == 404:  # discovery can lag Established briefly
                    return None
                raise

        obj = wait_for("custom resource to be creatable", created, timeout=30)
        assert obj["spec"] == {"size": 3}
    finally:
        ext.delete_custom_resource_definition(name)


def test_deployment_gets_status(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str
) -> None:
    if not control_plane.controller_manager_running:
        pytest.skip(
            "kube-controller-manager was not built "
            "(CONVEYOR_SKIP_CONTROLLER_MANAGER=1 scripts/build-control-plane.sh)"
        )
    apps = client.AppsV1Api(api)
    labels = {"app": "smoke"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="smoke"),
            spec=client.V1DeploymentSpec(
                replicas=1,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[client.V1Container(name="main", image="busybox")]
                    ),
                ),
            ),
        ),
    )

    def observed_generation() -> int | None:
        dep = apps.read_namespaced_deployment("smoke", namespace)
        observed = dep.status.observed_generation if dep.status is not None else None
        generation = dep.metadata.generation if dep.metadata is not None else None
        if observed is None or generation is None or observed < generation:
            return None
        return observed

    assert wait_for("deployment status.observedGeneration", observed_generation, timeout=60) >= 1

    # The ReplicaSet controller creates the pod (no scheduler/kubelet: it stays Pending).
    core = client.CoreV1Api(api)
    pods = wait_for(
        "a pod of the deployment",
        lambda: core.list_namespaced_pod(namespace, label_selector="app=smoke").items,
        timeout=60,
    )
    owners = (pods[0].metadata.owner_references if pods[0].metadata is not None else None) or []
    assert [o.kind for o in owners] == ["ReplicaSet"]
