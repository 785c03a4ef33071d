"""The operator against a real kube-apiserver: children, scaling, pruning, repair, validation and status."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from conveyor_operator.cluster import Cluster
from conveyor_operator.crd import PLURAL
from conveyor_operator.labels import STEP_LABEL, child_selector
from conveyor_operator.reconciler import Reconciler
from conveyor_runtime.spec import API_GROUP, API_VERSION, STEP_SPEC_ENV, StepSpec, step_from_env
from tests.support.operator_fixtures import (  # noqa: F401 - fixtures
    TEST_IMAGE,
    Kube,
    kube,
    namespace,
    operator,
    pipeline_body,
    pipeline_crd,
    wait_for,
)

pytestmark = pytest.mark.controlplane


def _demo(name: str = "demo") -> dict[str, Any]:
    return pipeline_body(
        name,
        {"name": "pre", "op": "preprocess", "config": {"size": 32}, "replicas": 1},
        {
            "name": "cls",
            "model": {"path": "models/resnet18.onnx", "build": "conveyor_examples.resnet:build"},
            "replicas": 2,
            "batching": {"maxBatchSize": 16, "maxQueueDelayMicroseconds": 500},
            "resources": {"gpu": 1, "cpu": "500m", "memory": "1Gi"},
            "nodeSelector": {"gpu": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    )


def _children(kube: Kube, namespace: str, name: str = "demo") -> dict[str, set[str]]:
    selector = child_selector(name)
    return {kind: kube.names(namespace, kind, selector) for kind in ("Deployment", "Service", "ConfigMap")}


def _env(deployment: Any) -> dict[str, str]:
    return {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}


def test_operator_creates_children(kube: Kube, namespace: str, operator: Any) -> None:
    created = kube.create_pipeline(namespace, _demo())
    expected = {
        "Deployment": {"demo-pre", "demo-cls", "demo-gateway"},
        "Service": {"demo-pre", "demo-cls", "demo-gateway"},
        "ConfigMap": {"demo-graph"},
    }
    wait_for(lambda: _children(kube, namespace) == expected, "every child of demo")

    cls = kube.deployment(namespace, "demo-cls")
    assert cls is not None
    ref = cls.metadata.owner_references[0]
    assert (ref.kind, ref.name, ref.uid, ref.controller) == ("InferencePipeline", "demo", created["metadata"]["uid"], True)
    assert cls.metadata.labels["app.kubernetes.io/managed-by"] == "conveyor-operator"
    assert cls.spec.replicas == 2
    container = cls.spec.template.spec.containers[0]
    assert container.image == TEST_IMAGE
    assert container.command == ["conveyor", "step", "--port", "9000", "--metrics-port", "9090"]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert container.readiness_probe.grpc.port == 9000
    assert container.security_context.read_only_root_filesystem is True
    assert cls.spec.template.spec.tolerations[0].key == "nvidia.com/gpu"
    assert cls.spec.template.spec.node_selector == {"gpu": "true"}
    step = step_from_env(_env(cls))
    assert isinstance(step, StepSpec) and step.batching.maxBatchSize == 16 and step.name == "cls"
    assert _env(cls)["CONVEYOR_MAX_BATCH_SIZE"] == "16" and STEP_SPEC_ENV in _env(cls)

    service = kube.core.read_namespaced_service("demo-cls", namespace)
    assert service.spec.cluster_ip == "None"
    assert [(p.name, p.port) for p in service.spec.ports] == [("grpc", 9000)]
    gateway = kube.deployment(namespace, "demo-gateway")
    assert gateway is not None
    assert "--manifest" in gateway.spec.template.spec.containers[0].command

    def observed() -> dict[str, Any] | None:
        status = kube.get_pipeline(namespace, "demo").get("status") or {}
        return status if status.get("observedGeneration") == 1 else None

    status = wait_for(observed, "status.observedGeneration == 1")
    assert status["endpoint"] == f"demo-gateway.{namespace}.svc:8001"
    assert [(s["name"], s["desired"]) for s in status["steps"]] == [("pre", 1), ("cls", 2)]
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Progressing", "Degraded"}

    # What `kubectl get ipl` prints: the server-side table with the CRD's printer columns.
    table = json.loads(
        kube.api_client.call_api(
            "GET",
            f"{kube.api_client.configuration.host}/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{PLURAL}",
            header_params={**_auth(kube), "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        ).read()
    )
    columns = [c["name"] for c in table["columnDefinitions"] if c.get("priority", 0) == 0]
    assert columns == ["Name", "Ready", "Steps", "Replicas", "Throughput", "P99", "Bottleneck", "Endpoint", "Age"]
    cells = dict(zip(columns, table["rows"][0]["cells"]))
    assert cells["Name"] == "demo" and cells["Steps"] == 2 and cells["Endpoint"] == status["endpoint"]


def _auth(kube: Kube) -> dict[str, str]:
    token = kube.api_client.configuration.api_key.get("authorization") or kube.api_client.configuration.api_key.get(
        "BearerToken", ""
    )
    return {"Authorization": token if token.startswith("Bearer") else f"Bearer {token}"}


def test_reconciler_is_idempotent(kube: Kube, namespace: str, pipeline_crd: Any) -> None:
    created = kube.create_pipeline(namespace, _demo("idem"))
    reconciler = Reconciler(Cluster(kube.api_client), default_image=TEST_IMAGE)
    reconciler.reconcile(created)

    def ours(obj: Any) -> str:
        """When `conveyor-operator` last changed its fields (SSA leaves it alone when nothing changes)."""
        entries = [m for m in obj.metadata.managed_fields if m.manager == "conveyor-operator"]
        return f"{entries[0].operation}@{entries[0].time}"

    def versions() -> dict[tuple[str, str], Any]:
        found: dict[tuple[str, str], Any] = {}
        # A controller-manager may update a Deployment's status: compare its generation and our fields' stamp.
        for deployment in kube.apps.list_namespaced_deployment(namespace).items:
            found[("Deployment", deployment.metadata.name)] = (deployment.metadata.generation, ours(deployment))
        for service in kube.core.list_namespaced_service(namespace).items:
            found[("Service", service.metadata.name)] = service.metadata.resource_version
        for cm in kube.core.list_namespaced_config_map(namespace, label_selector=child_selector("idem")).items:
            found[("ConfigMap", cm.metadata.name)] = cm.metadata.resource_version
        return found

    before = versions()
    assert len(before) == 7
    outcome = reconciler.reconcile(kube.get_pipeline(namespace, "idem"))
    assert not outcome.errors
    assert versions() == before
    assert [e.reason for e in outcome.events if e.reason in {"Created", "Scaled", "Deleted"}] == []


def test_operator_scales_only_the_edited_step(kube: Kube, namespace: str, operator: Any) -> None:
    kube.create_pipeline(namespace, _demo())
    wait_for(lambda: kube.deployment(namespace, "demo-gateway"), "demo's gateway Deployment")
    generations = {n: kube.deployment(namespace, n).metadata.generation for n in ("demo-pre", "demo-cls", "demo-gateway")}

    kube.patch_pipeline(namespace, "demo", [{"op": "replace", "path": "/spec/steps/0/replicas", "value": 3}])

    wait_for(lambda: kube.deployment(namespace, "demo-pre").spec.replicas == 3, "demo-pre to scale to 3")
    assert kube.deployment(namespace, "demo-cls").metadata.generation == generations["demo-cls"]
    assert kube.deployment(namespace, "demo-cls").spec.replicas == 2
    # The gateway rolls only when the graph changes; replicas are not part of what it reads.
    wait_for(lambda: kube.get_pipeline(namespace, "demo").get("status", {}).get("observedGeneration") == 2, "generation 2")
    events = wait_for(
        lambda: [e for e in kube.events(namespace, "demo") if e.reason == "Scaled"], "a Scaled event on demo"
    )
    assert "demo-pre" in events[0].message and "1 -> 3" in events[0].message


def test_operator_leaves_the_replicas_of_a_step_with_an_external_autoscaler_alone(
    kube: Kube, namespace: str, operator: Any
) -> None:
    """`externalAutoscaler: true`: the operator creates the Deployment with `replicas`, then never puts a count back
    (an HPA scales it through the scale subresource), while it still puts back the other steps' counts."""
    body = _demo()
    body["spec"]["steps"][1]["externalAutoscaler"] = True
    kube.create_pipeline(namespace, body)
    wait_for(lambda: (d := kube.deployment(namespace, "demo-cls")) is not None and d.spec.replicas == 2, "demo-cls at 2")
    wait_for(lambda: kube.get_pipeline(namespace, "demo").get("status", {}).get("observedGeneration"), "status")
    # Before any autoscaler writes the count, later applies (which leave `replicas` out) keep the one it was created with.
    kube.apps.patch_namespaced_deployment("demo-pre", namespace, {"spec": {"replicas": 3}})  # a hand edit: a reconcile
    wait_for(lambda: kube.deployment(namespace, "demo-pre").spec.replicas == 1, "demo-pre back to 1")
    assert kube.deployment(namespace, "demo-cls").spec.replicas == 2

    kube.apps.patch_namespaced_deployment_scale("demo-cls", namespace, {"spec": {"replicas": 5}})  # as an HPA does
    kube.apps.patch_namespaced_deployment("demo-pre", namespace, {"spec": {"replicas": 4}})  # a hand edit
    # the operator puts demo-pre back in a reconcile that applies demo-cls too
    wait_for(lambda: kube.deployment(namespace, "demo-pre").spec.replicas == 1, "demo-pre back to 1")
    kube.patch_pipeline(namespace, "demo", [{"op": "replace", "path": "/spec/steps/0/replicas", "value": 2}])
    wait_for(lambda: kube.deployment(namespace, "demo-pre").spec.replicas == 2, "demo-pre scaled to 2")
    assert kube.deployment(namespace, "demo-cls").spec.replicas == 5


def test_operator_deletes_a_removed_steps_children(kube: Kube, namespace: str, operator: Any) -> None:
    body = _demo()
    body["spec"]["steps"].append({"name": "post", "op": "topk"})
    kube.create_pipeline(namespace, body)
    wait_for(lambda: "demo-post" in _children(kube, namespace)["Deployment"], "demo-post Deployment")

    kube.patch_pipeline(namespace, "demo", [{"op": "remove", "path": "/spec/steps/2"}])

    wait_for(
        lambda: _children(kube, namespace)
        == {
            "Deployment": {"demo-pre", "demo-cls", "demo-gateway"},
            "Service": {"demo-pre", "demo-cls", "demo-gateway"},
            "ConfigMap": {"demo-graph"},
        },
        "demo-post's Deployment and Service to be deleted",
    )
    graph = kube.core.read_namespaced_config_map("demo-graph", namespace).data["pipeline.yaml"]
    assert "post" not in graph
    wait_for(lambda: [e for e in kube.events(namespace, "demo") if e.reason == "Deleted"], "a Deleted event")


def test_operator_restores_children_changed_by_hand(kube: Kube, namespace: str, operator: Any) -> None:
    kube.create_pipeline(namespace, _demo())
    first = wait_for(lambda: kube.deployment(namespace, "demo-pre"), "demo-pre Deployment")
    wait_for(lambda: kube.get_pipeline(namespace, "demo").get("status", {}).get("observedGeneration"), "status")

    kube.apps.delete_namespaced_deployment("demo-pre", namespace)
    kube.core.delete_namespaced_service("demo-cls", namespace)
    kube.apps.patch_namespaced_deployment("demo-cls", namespace, {"spec": {"replicas": 7}})

    restored = wait_for(
        lambda: (d := kube.deployment(namespace, "demo-pre")) is not None and d.metadata.uid != first.metadata.uid and d,
        "demo-pre to be re-created",
    )
    assert restored.metadata.labels[STEP_LABEL] == "pre"
    wait_for(lambda: "demo-cls" in _children(kube, namespace)["Service"], "demo-cls Service to be re-created")
    wait_for(lambda: kube.deployment(namespace, "demo-cls").spec.replicas == 2, "demo-cls replicas back to 2")


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"steps": []}, "spec.steps"),
        ({"steps": [{"name": "Bad_Name", "op": "preprocess"}]}, "spec.steps[0].name"),
        ({"steps": [{"name": "a", "op": "preprocess", "replicas": -1}]}, "spec.steps[0].replicas"),
        ({"steps": [{"name": "a", "op": "preprocess", "batching": {"maxBatchSize": 5000}}]}, "spec.steps[0].batching.maxBatchSize"),
        ({"steps": [{"name": "a", "model": {"path": "m.onnx", "device": "tpu"}}]}, "spec.steps[0].model.device"),
        ({"steps": [{"name": "a", "op": "preprocess", "model": {"path": "m.onnx"}}]}, "spec.steps[0]"),
        ({"steps": [{"name": "a", "op": "identity"}, {"name": "a", "op": "topk"}]}, "spec.steps"),
        ({"steps": [{"name": "a", "op": "identity", "resources": {"memory": "lots"}}]}, "spec.steps[0].resources.memory"),
        ({"steps": [{"name": "a", "op": "identity"}], "gateway": {"grpcPort": 70000}}, "spec.gateway.grpcPort"),
    ],
)
def test_api_server_rejects_an_invalid_pipeline_naming_the_field(
    kube: Kube, namespace: str, pipeline_crd: Any, patch: dict[str, Any], field: str
) -> None:
    body = pipeline_body("bad")
    body["spec"] = patch
    with pytest.raises(ApiException) as caught:
        kube.create_pipeline(namespace, body)
    assert caught.value.status == 422
    message = json.loads(caught.value.body)["message"]
    assert f"{field}:" in message or f"{field} " in message, message


def test_api_server_rejects_overlong_child_names(kube: Kube, namespace: str, pipeline_crd: Any) -> None:
    body = pipeline_body("p" * 40, {"name": "s" * 30, "op": "preprocess"})
    with pytest.raises(ApiException) as caught:
        kube.create_pipeline(namespace, body)
    assert caught.value.status == 422 and "63 characters" in json.loads(caught.value.body)["message"]


def test_operator_reports_an_invalid_graph_and_builds_nothing(kube: Kube, namespace: str, operator: Any) -> None:
    body = pipeline_body(
        "loop",
        {"name": "a", "op": "preprocess", "inputs": ["b"]},
        {"name": "b", "op": "preprocess", "inputs": ["a"]},
        {"name": "c", "op": "preprocess", "inputs": ["nope"]},
    )
    kube.create_pipeline(namespace, body)

    degraded = wait_for(
        lambda: (c := kube.condition(namespace, "loop", "Degraded")).get("status") == "True" and c, "Degraded=True"
    )
    assert degraded["reason"] == "InvalidSpec"
    assert "spec.steps[2].inputs[0]" in degraded["message"] and "nope" in degraded["message"]
    assert kube.condition(namespace, "loop", "Ready")["status"] == "False"
    wait_for(lambda: [e for e in kube.events(namespace, "loop") if e.reason == "InvalidSpec"], "an InvalidSpec event")
    assert _children(kube, namespace, "loop") == {"Deployment": set(), "Service": set(), "ConfigMap": set()}

    kube.patch_pipeline(namespace, "loop", [{"op": "replace", "path": "/spec/steps/2/inputs/0", "value": "b"}])
    degraded = wait_for(
        lambda: (c := kube.condition(namespace, "loop", "Degraded")).get("reason") == "InvalidSpec"
        and "cycle" in c.get("message", "")
        and c,
        "the cycle to be reported",
    )
    assert "spec.steps[0].inputs" in degraded["message"] and "a -> b -> a" in degraded["message"]
    assert _children(kube, namespace, "loop")["Deployment"] == set()

    kube.patch_pipeline(namespace, "loop", [{"op": "remove", "path": "/spec/steps/0/inputs"}])
    wait_for(lambda: kube.condition(namespace, "loop", "Degraded").get("status") == "False", "Degraded=False after the fix")
    wait_for(lambda: len(_children(kube, namespace, "loop")["Deployment"]) == 4, "children after the fix")


def test_operator_status_follows_the_deployments(kube: Kube, namespace: str, operator: Any, control_plane: Any) -> None:
    kube.create_pipeline(namespace, _demo())
    wait_for(lambda: len(_children(kube, namespace)["Deployment"]) == 3, "demo's Deployments")
    ready = kube.condition(namespace, "demo", "Ready")
    assert ready.get("status") in {None, "False"}

    for name in ("demo-pre", "demo-cls", "demo-gateway"):
        kube.make_ready(namespace, name, controllers=control_plane.controller_manager_running)
    ready = wait_for(lambda: (c := kube.condition(namespace, "demo", "Ready")).get("status") == "True" and c, "Ready=True")
    assert ready["reason"] == "AllStepsReady"
    status = kube.get_pipeline(namespace, "demo")["status"]
    assert status["replicas"] == "3/3"
    assert kube.condition(namespace, "demo", "Progressing")["status"] == "False"
    wait_for(lambda: [e for e in kube.events(namespace, "demo") if e.reason == "Ready"], "a Ready event")

    kube.patch_pipeline(namespace, "demo", [{"op": "replace", "path": "/spec/steps/1/replicas", "value": 4}])
    not_ready = wait_for(
        lambda: (c := kube.condition(namespace, "demo", "Ready")).get("status") == "False" and c, "Ready=False after scaling"
    )
    assert not_ready["reason"] == "StepsNotReady" and "step 'cls'" in not_ready["message"]
    assert kube.condition(namespace, "demo", "Progressing")["status"] == "True"


def _degraded(kube: Kube, namespace: str, name: str, reason: str) -> dict[str, Any]:
    return wait_for(
        lambda: (c := kube.condition(namespace, name, "Degraded")).get("reason") == reason and c,
        f"Degraded with reason {reason} on {name}",
    )


def test_operator_reports_a_child_the_api_server_rejects_as_degraded(kube: Kube, namespace: str, operator: Any) -> None:
    body = pipeline_body(
        "tol",
        {"name": "pre", "op": "identity"},
        # Valid for the CRD, invalid for a Deployment: the API server answers 422.
        {"name": "post", "op": "identity", "tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
    )
    kube.create_pipeline(namespace, body)

    degraded = _degraded(kube, namespace, "tol", "ApplyFailed")
    assert degraded["status"] == "True"
    assert "Deployment tol-post (step 'post')" in degraded["message"], degraded["message"]
    assert "tolerations[0]" in degraded["message"] and "must be empty" in degraded["message"], degraded["message"]
    assert kube.condition(namespace, "tol", "Ready")["reason"] == "ApplyFailed"
    assert _children(kube, namespace, "tol")["Deployment"] == {"tol-pre", "tol-gateway"}
    events = wait_for(lambda: [e for e in kube.events(namespace, "tol") if e.reason == "ApplyFailed"], "an ApplyFailed event")
    assert events[0].type == "Warning" and "tol-post" in events[0].message

    kube.patch_pipeline(namespace, "tol", [{"op": "remove", "path": "/spec/steps/1/tolerations"}])
    wait_for(lambda: kube.condition(namespace, "tol", "Degraded").get("status") == "False", "Degraded=False after the fix")
    assert "tol-post" in _children(kube, namespace, "tol")["Deployment"]


def test_operator_reports_a_quota_that_forbids_the_deployments_as_degraded(kube: Kube, namespace: str, operator: Any) -> None:
    quota = {"metadata": {"name": "no-deployments"}, "spec": {"hard": {"count/deployments.apps": "0"}}}
    kube.core.create_namespaced_resource_quota(namespace, quota)
    kube.create_pipeline(namespace, pipeline_body("quota", {"name": "pre", "op": "identity"}))

    degraded = _degraded(kube, namespace, "quota", "ApplyFailed")
    assert "Deployment quota-pre (step 'pre')" in degraded["message"] and "Deployment quota-gateway (gateway)" in degraded["message"]
    assert "no-deployments" in degraded["message"] and "forbidden" in degraded["message"], degraded["message"]
    assert _children(kube, namespace, "quota") == {"Deployment": set(), "Service": {"quota-pre", "quota-gateway"}, "ConfigMap": {"quota-graph"}}

    kube.core.delete_namespaced_resource_quota("no-deployments", namespace)  # the resync applies again
    wait_for(lambda: kube.condition(namespace, "quota", "Degraded").get("status") == "False", "Degraded=False without the quota")
    assert _children(kube, namespace, "quota")["Deployment"] == {"quota-pre", "quota-gateway"}


def test_operator_puts_back_a_hand_set_batching_env_and_says_to_edit_the_pipeline(
    kube: Kube, namespace: str, operator: Any
) -> None:
    kube.create_pipeline(namespace, _demo())
    wait_for(lambda: kube.deployment(namespace, "demo-cls"), "demo-cls Deployment")

    # What `kubectl set env deployment/demo-cls CONVEYOR_MAX_BATCH_SIZE=8` sends.
    env = [{"name": "CONVEYOR_MAX_BATCH_SIZE", "value": "8"}]
    kube.apps.patch_namespaced_deployment("demo-cls", namespace, {"spec": {"template": {"spec": {"containers": [{"name": "step", "env": env}]}}}})

    wait_for(lambda: _env(kube.deployment(namespace, "demo-cls"))["CONVEYOR_MAX_BATCH_SIZE"] == "16", "the CR's value back")
    events = wait_for(lambda: [e for e in kube.events(namespace, "demo") if e.reason == "Reverted"], "a Reverted event")
    assert events[0].type == "Warning"
    message = events[0].message
    assert "demo-cls" in message and "CONVEYOR_MAX_BATCH_SIZE" in message and "'8'" in message and "'16'" in message, message
    assert "spec.steps[1].batching.maxBatchSize" in message, message
