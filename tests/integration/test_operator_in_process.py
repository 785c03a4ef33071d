"""The operator against a real kube-apiserver with in-process edges (`inProcessWith`): a guest step gets a Service that
selects its host's pods and no Deployment, its host's pods list it, and editing a step into a guest (and back)
prunes (and brings back) its Deployment."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor_operator.labels import child_selector
from conveyor_runtime.spec import in_process_steps_from_env, step_from_env
from tests.support.operator_fixtures import (  # noqa: F401 - fixtures
    Kube,
    kube,
    namespace,
    operator,
    pipeline_body,
    pipeline_crd,
    wait_for,
)

pytestmark = pytest.mark.controlplane


def _body(name: str = "ipe", *, guest: bool = True) -> dict[str, Any]:
    """pre -> cls -> post; `pre` runs in cls's pods when `guest`."""
    pre: dict[str, Any] = {"name": "pre", "op": "preprocess", "config": {"size": 32}, "batching": {"maxBatchSize": 8}}
    if guest:
        pre["inProcessWith"] = "cls"
    return pipeline_body(name, pre, {"name": "cls", "op": "identity", "replicas": 2}, {"name": "post", "op": "topk"})


def _names(kube: Kube, namespace: str, kind: str, name: str = "ipe") -> set[str]:
    return kube.names(namespace, kind, child_selector(name))


def _env(deployment: Any) -> dict[str, str]:
    return {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}


def _status(kube: Kube, namespace: str, generation: int, name: str = "ipe") -> dict[str, Any]:
    def observed() -> dict[str, Any] | None:
        status = kube.get_pipeline(namespace, name).get("status") or {}
        return status if status.get("observedGeneration") == generation else None

    return wait_for(observed, f"status.observedGeneration == {generation}")


def test_operator_in_process_guest_gets_a_service_on_its_hosts_pods_and_no_deployment(
    kube: Kube, namespace: str, operator: Any
) -> None:
    kube.create_pipeline(namespace, _body())
    wait_for(lambda: _names(kube, namespace, "Deployment") == {"ipe-cls", "ipe-post", "ipe-gateway"}, "the Deployments")
    wait_for(lambda: _names(kube, namespace, "Service") == {"ipe-pre", "ipe-cls", "ipe-post", "ipe-gateway"}, "the Services")

    guest, host = kube.core.read_namespaced_service("ipe-pre", namespace), kube.core.read_namespaced_service("ipe-cls", namespace)
    cls = kube.deployment(namespace, "ipe-cls")
    assert cls is not None
    assert guest.spec.selector == host.spec.selector
    assert guest.spec.selector.items() <= cls.spec.template.metadata.labels.items()
    assert guest.spec.cluster_ip == "None" and [(p.name, p.port) for p in guest.spec.ports] == [("grpc", 9000)]

    env = _env(cls)
    assert step_from_env(env).name == "cls"
    guests = in_process_steps_from_env(env)
    assert [g.name for g in guests] == ["pre"] and guests[0].batching.maxBatchSize == 8
    post = kube.deployment(namespace, "ipe-post")
    assert post is not None and in_process_steps_from_env(_env(post)) == []

    status = _status(kube, namespace, 1)
    steps = {s["name"]: s for s in status["steps"]}
    assert steps["pre"]["inProcessWith"] == "cls" and steps["pre"]["deployment"] == "ipe-cls"
    assert steps["pre"]["desired"] == 2 and "inProcessWith" not in steps["cls"]
    assert "ipe-pre" not in " ".join(c["message"] for c in status["conditions"])


def test_operator_in_process_editing_a_step_into_a_guest_prunes_its_deployment_and_back(
    kube: Kube, namespace: str, operator: Any
) -> None:
    kube.create_pipeline(namespace, _body(guest=False))
    first = wait_for(lambda: kube.deployment(namespace, "ipe-pre"), "ipe-pre Deployment")
    wait_for(lambda: kube.deployment(namespace, "ipe-gateway"), "ipe-gateway Deployment")
    _status(kube, namespace, 1)
    gateway_template = kube.deployment(namespace, "ipe-gateway").spec.template.metadata.annotations

    kube.patch_pipeline(namespace, "ipe", [{"op": "add", "path": "/spec/steps/0/inProcessWith", "value": "cls"}])

    wait_for(lambda: "ipe-pre" not in _names(kube, namespace, "Deployment"), "ipe-pre's Deployment to be pruned")
    assert _names(kube, namespace, "Service") == {"ipe-pre", "ipe-cls", "ipe-post", "ipe-gateway"}
    wait_for(
        lambda: kube.core.read_namespaced_service("ipe-pre", namespace).spec.selector.get("conveyor.dev/step") == "cls",
        "ipe-pre's Service to select cls's pods",
    )
    wait_for(
        lambda: [g.name for g in in_process_steps_from_env(_env(kube.deployment(namespace, "ipe-cls")))] == ["pre"],
        "ipe-cls's pods to list pre",
    )
    assert kube.deployment(namespace, "ipe-gateway").spec.template.metadata.annotations == gateway_template
    _status(kube, namespace, 2)
    events = wait_for(
        lambda: [e for e in kube.events(namespace, "ipe") if e.reason == "Deleted" and "ipe-pre" in e.message],
        "a Deleted event for ipe-pre",
    )
    assert "runs in the pods of step 'cls'" in events[0].message

    kube.patch_pipeline(namespace, "ipe", [{"op": "remove", "path": "/spec/steps/0/inProcessWith"}])

    back = wait_for(lambda: kube.deployment(namespace, "ipe-pre"), "ipe-pre's Deployment to come back")
    assert back.metadata.uid != first.metadata.uid and step_from_env(_env(back)).name == "pre"
    wait_for(
        lambda: kube.core.read_namespaced_service("ipe-pre", namespace).spec.selector.get("conveyor.dev/step") == "pre",
        "ipe-pre's Service to select its own pods again",
    )
    wait_for(lambda: in_process_steps_from_env(_env(kube.deployment(namespace, "ipe-cls"))) == [], "ipe-cls to list none")


def test_operator_in_process_scaling_the_host_restarts_no_pod(kube: Kube, namespace: str, operator: Any) -> None:
    """`kubectl edit ipl` of a host's replicas scales its Deployment only: no pod template changes (the guests' list
    in its env included), nor does any other Deployment."""
    kube.create_pipeline(namespace, _body())
    wait_for(lambda: kube.deployment(namespace, "ipe-gateway"), "ipe-gateway Deployment")
    _status(kube, namespace, 1)
    names = ("ipe-cls", "ipe-post", "ipe-gateway")
    templates = {n: kube.api_client.sanitize_for_serialization(kube.deployment(namespace, n).spec.template) for n in names}
    generations = {n: kube.deployment(namespace, n).metadata.generation for n in names}

    kube.patch_pipeline(namespace, "ipe", [{"op": "replace", "path": "/spec/steps/1/replicas", "value": 4}])

    wait_for(lambda: kube.deployment(namespace, "ipe-cls").spec.replicas == 4, "ipe-cls to scale to 4")
    status = _status(kube, namespace, 2)
    assert {s["name"]: s["desired"] for s in status["steps"]} == {"pre": 4, "cls": 4, "post": 1}
    after = {n: kube.api_client.sanitize_for_serialization(kube.deployment(namespace, n).spec.template) for n in names}
    assert after == templates
    assert kube.deployment(namespace, "ipe-post").metadata.generation == generations["ipe-post"]
    assert kube.deployment(namespace, "ipe-gateway").metadata.generation == generations["ipe-gateway"]
    assert _names(kube, namespace, "Deployment") == set(names)
