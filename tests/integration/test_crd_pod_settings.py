"""`image:` and `pod:` settings on steps and the gateway: the API server checks them with Kubernetes' own schemas, and
the CRD and the spec model both refuse what would clash with what the operator renders (against a real kube-apiserver).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from conveyor_operator.crd import PLURAL
from conveyor_runtime.spec import API_GROUP, API_VERSION, parse_manifest
from tests.support.operator_fixtures import (  # noqa: F401 - fixtures
    Kube,
    api_refusal,
    kube,
    model_errors,
    namespace,
    pipeline_body,
    pipeline_crd,
)

pytestmark = pytest.mark.controlplane

#: One of every `pod:` key, each with a value a Pod takes.
POD = {
    "env": [{"name": "LOG_LEVEL", "value": "debug"}, {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "t"}}}],
    "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "APP_"}],
    "volumes": [
        {"name": "labels", "configMap": {"name": "labels"}},
        {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi", "medium": "Memory"}},
    ],
    "volumeMounts": [{"name": "labels", "mountPath": "/etc/labels", "readOnly": True}, {"name": "scratch", "mountPath": "/scratch"}],
    "imagePullSecrets": [{"name": "registry"}],
    "serviceAccountName": "inference",
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}]
            }
        },
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"a": "b"}}}}
            ]
        },
    },
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}],
    "priorityClassName": "high",
    "runtimeClassName": "nvidia",
}


def _create(kube: Kube, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = kube.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, body)
    return created


def test_crd_keeps_every_pod_setting_and_image_of_a_step_and_the_gateway_as_given(
    kube: Kube, namespace: str, pipeline_crd: Any
) -> None:
    body = pipeline_body(
        "p",
        {"name": "a", "op": "identity", "image": "registry/custom:1", "pod": POD},
        {"name": "b", "op": "identity"},
        gateway={"image": "registry/gateway:1", "pod": POD},
    )
    parse_manifest(copy.deepcopy(body))
    spec = _create(kube, namespace, body)["spec"]
    assert spec["steps"][0]["pod"] == POD and spec["steps"][0]["image"] == "registry/custom:1"
    assert spec["gateway"]["pod"] == POD and spec["gateway"]["image"] == "registry/gateway:1"
    # nothing is defaulted into a step that sets none
    assert spec["steps"][1]["pod"] == {} and "image" not in spec["steps"][1]


@pytest.mark.parametrize(
    ("pod", "words"),
    [
        ({"env": [{"value": "x"}]}, ["spec.steps[0].pod.env[0].name", "Required value"]),
        ({"volumes": [{"name": "v", "emptyDir": {"medium": 3}}]}, ["spec.steps[0].pod.volumes[0].emptyDir.medium", "string"]),
        (
            {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}},
            ["spec.steps[0].pod.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms", "Required value"],
        ),
        ({"topologySpreadConstraints": [{"maxSkew": "one", "topologyKey": "z", "whenUnsatisfiable": "DoNotSchedule"}]},
         ["spec.steps[0].pod.topologySpreadConstraints[0].maxSkew", "integer"]),
        ({"imagePullSecrets": [{"name": "r", "namespace": "x"}]}, ["spec.steps[0].pod.imagePullSecrets[0]", "namespace"]),
        ({"priorityClassName": 7}, ["spec.steps[0].pod.priorityClassName", "string"]),
    ],
    ids=["env-without-name", "medium-not-string", "node-affinity-without-terms", "max-skew-not-integer", "unknown-field", "not-a-string"],
)
def test_crd_refuses_a_pod_setting_that_is_not_the_kubernetes_type_naming_the_field(
    kube: Kube, namespace: str, pipeline_crd: Any, pod: dict[str, Any], words: list[str]
) -> None:
    body = pipeline_body("p", {"name": "a", "op": "identity", "pod": pod})
    with pytest.raises(ApiException) as caught:
        kube.custom.create_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, PLURAL, body, field_validation="Strict"
        )
    assert caught.value.status in (400, 422), caught.value.body
    message = json.loads(caught.value.body)["message"]
    assert all(w in message for w in words), message


@pytest.mark.parametrize(
    ("where", "pod", "field", "words"),
    [
        ("step", {"volumes": [{"name": "models", "emptyDir": {}}]}, "spec.steps[0].pod.volumes", ["'models'", "the operator's"]),
        ("gateway", {"volumes": [{"name": "graph", "emptyDir": {}}]}, "spec.gateway.pod.volumes", ["'graph'", "the operator's"]),
        ("step", {"volumeMounts": [{"name": "x", "mountPath": "/tmp/"}]}, "spec.steps[0].pod.volumeMounts", ["'/tmp/'", "the operator's"]),
        (
            "step",
            {"volumeMounts": [{"name": "x", "mountPath": "/var/lib/conveyor/models/m.onnx"}]},
            "spec.steps[0].pod.volumeMounts",
            ["/var/lib/conveyor/models/m.onnx", "the operator's"],
        ),
        ("step", {"env": [{"name": "CONVEYOR_STEP_SPEC", "value": "{}"}]}, "spec.steps[0].pod.env", ["CONVEYOR_STEP_SPEC", "set by the operator"]),
        ("gateway", {"env": [{"name": "HOME", "value": "/"}]}, "spec.gateway.pod.env", ["'HOME'", "set by the operator"]),
    ],
    ids=["volume-models", "gateway-volume-graph", "mount-tmp", "mount-below-models", "env-step-spec", "gateway-env-home"],
)
def test_crd_and_model_refuse_a_pod_setting_that_clashes_with_the_operators_naming_the_field(
    kube: Kube, namespace: str, pipeline_crd: Any, where: str, pod: dict[str, Any], field: str, words: list[str]
) -> None:
    step: dict[str, Any] = {"name": "a", "op": "identity"}
    body = pipeline_body("p", {**step, "pod": pod}) if where == "step" else pipeline_body("p", step, gateway={"pod": pod})
    errors = model_errors(body)
    assert field in errors and all(w in errors[field] for w in words), errors
    message = api_refusal(kube, namespace, body)
    assert field in message and "the operator" in message, message
