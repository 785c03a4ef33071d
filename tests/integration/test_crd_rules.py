"""The CRD and the spec model refuse the same pipelines, each naming the same field (against a real kube-apiserver)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from conveyor_operator.crd import PLURAL
from conveyor_runtime.spec import API_GROUP, API_VERSION, BUILTIN_OP_NAMES, parse_manifest
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

MODEL = {"path": "models/m.onnx"}


SERVICE_NAME = "`<metadata.name>-<step name>`"  # a rule on the root cannot point at one step: its message names both


@pytest.mark.parametrize(
    ("body", "field", "api_field", "words"),
    [
        (
            pipeline_body("p", {"name": "a", "op": "resize"}),
            "spec.steps[0].op",
            "spec.steps[0].op",
            ["built-ins: identity,", "got 'resize'"],
        ),
        (pipeline_body("p", {"name": "a", "op": "pkg.module"}), "spec.steps[0].op", "spec.steps[0].op", ["package.module:Class"]),
        (
            pipeline_body("p", {"name": "a", "op": "identity"}, {"name": "b", "model": MODEL, "config": {"k": 1}}),
            "spec.steps[1].config",
            "spec.steps[1].config",
            ["only op steps take `config`"],
        ),
        (
            pipeline_body("p", {"name": "a", "op": "identity"}, {"name": "b", "model": MODEL, "config": {}}),
            "spec.steps[1].config",
            "spec.steps[1].config",
            ["only op steps take `config`"],
        ),
        (pipeline_body("p", {"name": "gateway", "op": "identity"}), "spec.steps[0].name", "spec.steps[0].name", ["reserved"]),
        (
            pipeline_body("1p", {"name": "a", "op": "identity"}),
            "metadata.name",
            "metadata.name",
            ["DNS-1035", "starting with a letter"],
        ),
        (pipeline_body("p" * 33, {"name": "s" * 30, "op": "identity"}), "spec.steps[0].name", SERVICE_NAME, ["63", "shorten"]),
    ],
    ids=["unknown-builtin", "not-a-reference", "config-on-model", "empty-config-on-model", "reserved-name", "digit-first-pipeline", "service-64"],
)
def test_crd_and_model_refuse_the_same_pipeline_naming_the_field(
    kube: Kube, namespace: str, pipeline_crd: Any, body: dict[str, Any], field: str, api_field: str, words: list[str]
) -> None:
    errors = model_errors(body)
    assert field in errors and all(w in errors[field] for w in words), errors
    message = api_refusal(kube, namespace, body)
    assert api_field in message and all(w in message for w in words), message


def test_crd_and_model_accept_builtins_references_and_a_63_character_service_name(
    kube: Kube, namespace: str, pipeline_crd: Any
) -> None:
    steps = [{"name": f"s{i}", "op": op} for i, op in enumerate([*BUILTIN_OP_NAMES, "my_pkg.ops:Resize"])]
    steps.append({"name": "m", "model": MODEL})
    steps.append({"name": "s" * 30, "op": "m:C"})
    body = pipeline_body("p" * 32, *steps)  # 'p'*32 + '-' + 's'*30: 63 characters
    parse_manifest(copy.deepcopy(body))
    created = kube.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, body)
    assert [s["name"] for s in created["spec"]["steps"]] == [s["name"] for s in steps]


def test_crd_refuses_an_unknown_top_level_field_under_strict_field_validation(
    kube: Kube, namespace: str, pipeline_crd: Any
) -> None:
    """kubectl asks for Strict validation by default; the model refuses the same field."""
    body = {**pipeline_body("p", {"name": "a", "op": "identity"}), "specs": {}}
    assert list(model_errors(body)) == ["specs"]
    assert 'unknown field "specs"' in api_refusal(kube, namespace, body, status=400, field_validation="Strict")
