"""The committed CRD is exactly what the spec model generates, and it is a structural schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from conveyor_operator.crd import CRD_FILENAME, build_crd, crd_yaml, spec_schema
from conveyor_runtime.spec import (
    BUILTIN_OP_NAMES,
    CONFIG_RULE,
    DNS1035_LABEL,
    DNS1035_RULE,
    GATEWAY_STEP_NAME,
    IMPORT_REF,
    MAX_SERVICE_NAME,
    OP_RULE,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
REGENERATE = f"conveyor crd -o crds/{CRD_FILENAME} -o charts/conveyor/files/{CRD_FILENAME}"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.get("properties", {}).items():
            found += _walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            found += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


def test_crd_committed_file_matches_the_model() -> None:
    committed = (REPO_ROOT / "crds" / CRD_FILENAME).read_text()
    assert committed == crd_yaml(), f"crds/{CRD_FILENAME} is stale; regenerate with: {REGENERATE}"


def test_crd_chart_copy_matches_the_model() -> None:
    chart_copy = (REPO_ROOT / "charts" / "conveyor" / "files" / CRD_FILENAME).read_text()
    assert chart_copy == crd_yaml(), f"the chart's CRD is stale; regenerate with: {REGENERATE}"


def test_crd_schema_is_structural() -> None:
    root = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(root):
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "nullable", "title"} & node.keys(), path
        # Kubernetes' own int-or-string fields (emptyDir.sizeLimit, ...) are structural with no `type`
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string"), (
            f"{path or '<root>'} has no type"
        )
        if node.get("type") == "object" and path != ".metadata" and "properties" not in node and "additionalProperties" not in node:
            assert node.get("x-kubernetes-preserve-unknown-fields") is True, path
        if "properties" in node:
            assert "additionalProperties" not in node, path


def test_crd_free_form_maps_keep_unknown_fields() -> None:
    step = spec_schema()["properties"]["steps"]["items"]["properties"]
    assert step["config"]["x-kubernetes-preserve-unknown-fields"] is True
    assert step["model"]["properties"]["buildArgs"]["x-kubernetes-preserve-unknown-fields"] is True
    assert step["tolerations"]["items"]["x-kubernetes-preserve-unknown-fields"] is True
    assert step["nodeSelector"]["additionalProperties"] == {"type": "string"}


def test_crd_prefers_defaults_to_nullable() -> None:
    schema = spec_schema()
    step = schema["properties"]["steps"]["items"]
    assert step["properties"]["replicas"]["default"] == 1
    assert step["properties"]["batching"]["default"] == {}
    assert step["properties"]["batching"]["properties"]["maxBatchSize"]["default"] == 8
    assert schema["properties"]["gateway"]["default"] == {}
    assert "default" not in step["properties"]["model"], "an absent model must stay absent (op XOR model)"
    assert step["properties"]["inputs"]["type"] == "array"


def test_crd_has_validation_rules_with_bounded_cost() -> None:
    schema = spec_schema()
    steps = schema["properties"]["steps"]
    assert steps["maxItems"] == 64 and steps["minItems"] == 1
    assert "exists_one" in steps["x-kubernetes-validations"][0]["rule"]
    assert "has(self.op) != has(self.model)" in steps["items"]["x-kubernetes-validations"][0]["rule"]
    name = steps["items"]["properties"]["name"]
    assert name["maxLength"] == 40 and name["pattern"].startswith("^[a-z0-9]")
    assert steps["items"]["properties"]["model"]["properties"]["device"]["enum"] == ["cpu", "cuda", "tensorrt"]


def test_crd_printer_columns_and_status_subresource() -> None:
    version = build_crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Ready", "Steps", "Replicas", "Throughput", "P99", "Bottleneck", "Endpoint", "Age"]
    names = build_crd()["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("InferencePipeline", "inferencepipelines", ["ipl"])


def test_crd_validates_against_the_kubernetes_schema() -> None:
    kubernetes_validate.validate(yaml.safe_load(crd_yaml()), "1.36.0", strict=True)


def test_crd_rules_say_what_the_spec_model_says() -> None:
    """Each CEL rule is built from the model's own names and messages (tests/integration/test_crd_rules.py runs them)."""
    step = spec_schema()["properties"]["steps"]["items"]
    [op_rule] = step["properties"]["op"]["x-kubernetes-validations"]
    assert all(f'"{name}"' in op_rule["rule"] for name in BUILTIN_OP_NAMES) and f'"{IMPORT_REF}"' in op_rule["rule"]
    assert OP_RULE in op_rule["messageExpression"]
    config_rule = next(r for r in step["x-kubernetes-validations"] if r.get("fieldPath") == ".config")
    assert config_rule["message"] == CONFIG_RULE
    assert step["properties"]["name"]["x-kubernetes-validations"][0]["rule"] == f'self != "{GATEWAY_STEP_NAME}"'
    root = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    name_rule, service_rule = root["x-kubernetes-validations"]
    assert f'"{DNS1035_LABEL}"' in name_rule["rule"] and DNS1035_RULE in name_rule["message"]
    assert f"<= {MAX_SERVICE_NAME}" in service_rule["rule"]
