"""Settings a step would not use, or that set one thing two ways: the CRD and the spec model refuse the same ones,
naming the field (against a real kube-apiserver): GPU settings (and those that spread instances over the GPUs are
accepted), then replica counts."""

from __future__ import annotations

from typing import Any

import pytest

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


@pytest.mark.parametrize(
    ("step", "words"),
    [
        ({"op": "identity", "resources": {"gpuMemory": "2Gi"}}, "`gpuMemory` applies to model steps on device cuda or tensorrt"),
        ({"model": {"path": "m.onnx"}, "resources": {"gpuMemory": "2Gi"}}, "`gpuMemory` applies to model steps"),
        ({"model": {"path": "m.onnx", "device": "cuda"}, "resources": {"gpu": 2}}, "set model.instances to at least `gpu`"),
        (
            {"model": {"path": "m.onnx", "device": "cuda", "instances": 2}, "resources": {"gpu": 4}},
            "set model.instances to at least `gpu`",
        ),
    ],
    ids=["memory-on-an-op", "memory-on-cpu", "two-gpus-one-instance", "four-gpus-two-instances"],
)
def test_crd_and_model_refuse_gpu_settings_the_step_would_not_use(
    kube: Kube, namespace: str, pipeline_crd: Any, step: dict[str, Any], words: str
) -> None:
    body = pipeline_body("p", {"name": "s", **step})
    assert words in model_errors(body).get("spec.steps[0].resources", "")
    message = api_refusal(kube, namespace, body)
    assert "spec.steps[0].resources" in message and words in message, message


def test_crd_and_model_accept_instances_spread_over_gpus_with_a_memory_share(
    kube: Kube, namespace: str, pipeline_crd: Any
) -> None:
    step = {"model": {"path": "m.onnx", "device": "tensorrt", "instances": 4}, "resources": {"gpu": 2, "gpuMemory": "6Gi"}}
    body = pipeline_body("p", {"name": "s", **step}, {"name": "c", "op": "identity", "resources": {"gpu": 2}})
    parse_manifest(body)
    created = kube.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, body)
    assert created["spec"]["steps"][0]["resources"] == {"gpu": 2, "gpuMemory": "6Gi"}


@pytest.mark.parametrize(
    ("step", "field", "words"),
    [
        (
            {"op": "identity", "externalAutoscaler": True, "autoscaling": {"maxReplicas": 3}},
            "spec.steps[0].autoscaling",
            "would both set this step's replicas",
        ),
        ({"op": "identity", "autoscaling": {"minReplicas": 5, "maxReplicas": 3}}, "spec.steps[0].autoscaling", "must not exceed"),
    ],
    ids=["two-autoscalers", "min-over-max"],
)
def test_crd_and_model_refuse_replicas_set_two_ways(
    kube: Kube, namespace: str, pipeline_crd: Any, step: dict[str, Any], field: str, words: str
) -> None:
    body = pipeline_body("p", {"name": "s", **step})
    assert words in model_errors(body).get(field, "")
    message = api_refusal(kube, namespace, body)
    assert field in message and words in message, message
