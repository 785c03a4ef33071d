"""The CRD and the spec model refuse the same model sources, naming the same field (against a real kube-apiserver)."""

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

DIGEST = "0" * 64


def _pipeline(model: dict[str, Any]) -> dict[str, Any]:
    return pipeline_body("p", {"name": "m", "model": model})


@pytest.mark.parametrize(
    ("model", "field", "words"),
    [
        ({"path": "a.onnx", "uri": "s3://models/a.onnx"}, "spec.steps[0].model", "exactly one of `path` or `uri`"),
        ({"device": "cpu"}, "spec.steps[0].model", "exactly one of `path` or `uri`"),
        ({"uri": "s3://models/a.onnx", "build": "m:f"}, "spec.steps[0].model.build", "use it with `path`, not `uri`"),
        ({"uri": "s3://models/a.onnx", "sha256": "ABC"}, "spec.steps[0].model.sha256", "should match"),
        ({"uri": "s3://models/a.onnx", "credentialsSecret": "Bad_Name"}, "spec.steps[0].model.credentialsSecret", "should match"),
        ({"uri": "s3://models/a.onnx", "cacheSizeLimit": "lots"}, "spec.steps[0].model.cacheSizeLimit", "should match"),
    ],
    ids=["both", "neither", "build-with-uri", "bad-digest", "bad-secret-name", "bad-size-limit"],
)
def test_crd_and_model_refuse_the_same_model_source_naming_the_field(
    kube: Kube, namespace: str, pipeline_crd: Any, model: dict[str, Any], field: str, words: str
) -> None:
    assert field in model_errors(_pipeline(model))
    message = api_refusal(kube, namespace, _pipeline(model))
    assert field in message and words in message, message


def test_crd_and_model_accept_a_model_from_a_uri_with_its_source_fields(kube: Kube, namespace: str, pipeline_crd: Any) -> None:
    model = {"uri": "s3://models/a.onnx", "sha256": DIGEST, "credentialsSecret": "s3-creds", "cacheSizeLimit": "2Gi"}
    body = _pipeline(model)
    parse_manifest(body)
    created = kube.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, body)
    assert created["spec"]["steps"][0]["model"]["uri"] == "s3://models/a.onnx"
    assert created["spec"]["steps"][0]["model"]["cacheSizeLimit"] == "2Gi"
