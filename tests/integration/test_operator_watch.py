"""The operator follows its children through watches, not only its periodic resync: here the resync never runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner

from conveyor_operator.labels import child_selector
from tests.support.operator_fixtures import (  # noqa: F401 - fixtures
    NO_RESYNC_S,
    WATCH_TIMEOUT_S,
    Kube,
    kube,
    namespace,
    pipeline_body,
    pipeline_crd,
    running_operator,
    wait_for,
)

pytestmark = pytest.mark.controlplane


@pytest.fixture(scope="module")
def watching_operator(pipeline_crd: dict[str, Any]) -> Iterator[KopfRunner]:
    with running_operator(NO_RESYNC_S) as runner:
        yield runner


def _pipeline() -> dict[str, Any]:
    return pipeline_body("watched", {"name": "pre", "op": "identity"}, {"name": "post", "op": "topk", "replicas": 2})


def test_operator_status_follows_deployment_status_without_a_resync(
    kube: Kube, namespace: str, watching_operator: Any, control_plane: Any
) -> None:
    kube.create_pipeline(namespace, _pipeline())
    wait_for(lambda: kube.names(namespace, "Deployment", child_selector("watched")) == {
        "watched-pre", "watched-post", "watched-gateway"}, "watched's Deployments")
    wait_for(lambda: kube.condition(namespace, "watched", "Ready").get("status") == "False", "Ready=False at first")

    for name in ("watched-pre", "watched-post", "watched-gateway"):
        kube.make_ready(namespace, name, controllers=control_plane.controller_manager_running)
    ready = wait_for(
        lambda: (c := kube.condition(namespace, "watched", "Ready")).get("status") == "True" and c,
        "Ready=True from the Deployments' status alone",
        timeout=WATCH_TIMEOUT_S,
    )
    assert ready["reason"] == "AllStepsReady"
    assert kube.get_pipeline(namespace, "watched")["status"]["replicas"] == "3/3"  # steps: 1 + 2


def test_operator_puts_back_a_hand_deleted_child_without_a_resync(
    kube: Kube, namespace: str, watching_operator: Any
) -> None:
    kube.create_pipeline(namespace, _pipeline())
    wait_for(lambda: "watched-post" in kube.names(namespace, "Service", child_selector("watched")), "watched-post Service")
    first = kube.core.read_namespaced_service("watched-post", namespace).metadata.uid

    kube.core.delete_namespaced_service("watched-post", namespace)
    kube.apps.patch_namespaced_deployment("watched-pre", namespace, {"spec": {"replicas": 5}})

    def recreated() -> bool:
        services = kube.core.list_namespaced_service(namespace, field_selector="metadata.name=watched-post").items
        return any(s.metadata.uid != first for s in services)

    wait_for(recreated, "the watched-post Service to be re-created", timeout=WATCH_TIMEOUT_S)
    wait_for(
        lambda: kube.deployment(namespace, "watched-pre").spec.replicas == 1,
        "watched-pre's replicas back to 1",
        timeout=WATCH_TIMEOUT_S,
    )
