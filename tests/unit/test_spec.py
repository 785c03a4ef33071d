"""The pipeline spec model: defaults, field-path errors, graph rules and the step's environment round trip."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from conveyor_runtime.errors import InvalidManifest
from conveyor_runtime.spec import (
    BUILTIN_OP_NAMES,
    STEP_SPEC_ENV,
    TWO_AUTOSCALERS_RULE,
    StepSpec,
    load_manifest,
    output_step,
    parse_manifest,
    step_from_env,
    step_inputs,
    step_to_env,
    topological_order,
)

MANIFEST: dict[str, Any] = {
    "apiVersion": "conveyor.dev/v1alpha1",
    "kind": "InferencePipeline",
    "metadata": {"name": "defects"},
    "spec": {
        "steps": [
            {"name": "preprocess", "op": "conveyor_runtime.ops.vision:Preprocess", "config": {"size": 224}, "replicas": 2},
            {
                "name": "classify",
                "inputs": ["preprocess"],
                "model": {"path": "models/classifier.onnx", "device": "cpu"},
                "batching": {"maxBatchSize": 8, "maxQueueDelayMicroseconds": 2000},
                "resources": {"gpu": 1},
            },
            {"name": "postprocess", "inputs": ["classify"], "op": "conveyor_runtime.ops.vision:TopK"},
        ]
    },
}


def manifest_with(**edits: Any) -> dict[str, Any]:
    """A deep copy of MANIFEST with `steps.<i>.<field>=value` style edits applied."""
    data = copy.deepcopy(MANIFEST)
    for dotted, value in edits.items():
        node: Any = data["spec"]
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        if value is None:
            del node[last]
        else:
            node[last] = value
    return data


def error_paths(data: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(data)
    return [e.path for e in info.value.errors]


def test_parse_manifest_applies_defaults() -> None:
    manifest = parse_manifest(MANIFEST)
    classify = manifest.spec.steps[1]
    assert classify.replicas == 1
    assert classify.batching.maxBatchSize == 8
    assert classify.batching.maxQueueSize == 1024
    assert classify.model is not None and classify.model.instances == 1
    assert manifest.spec.gateway.grpcPort == 8001 and manifest.spec.gateway.httpPort == 8000
    assert output_step(manifest.spec) == "postprocess"


def test_step_inputs_default_to_previous_step() -> None:
    data = manifest_with(steps__1__inputs=None, steps__2__inputs=None)
    assert step_inputs(parse_manifest(data).spec) == {
        "preprocess": [],
        "classify": ["preprocess"],
        "postprocess": ["classify"],
    }


@pytest.mark.parametrize(
    ("edits", "path"),
    [
        ({"steps__1__batching__maxBatchSize": -1}, "spec.steps[1].batching.maxBatchSize"),
        ({"steps__1__batching__maxQueueDelayMicroseconds": 10**9}, "spec.steps[1].batching.maxQueueDelayMicroseconds"),
        ({"steps__0__replicas": -1}, "spec.steps[0].replicas"),
        ({"steps__0__name": "Not_DNS"}, "spec.steps[0].name"),
        ({"steps__1__model__device": "tpu"}, "spec.steps[1].model.device"),
        ({"steps__1__resources__gpu": -2}, "spec.steps[1].resources.gpu"),
        ({"steps__2__typo": 1}, "spec.steps[2].typo"),
    ],
)
def test_parse_manifest_names_the_bad_field(edits: dict[str, Any], path: str) -> None:
    assert path in error_paths(manifest_with(**edits))


def test_parse_manifest_rejects_step_with_both_op_and_model() -> None:
    data = manifest_with(steps__0__model={"path": "x.onnx"})
    assert error_paths(data) == ["spec.steps[0]"]


def test_parse_manifest_rejects_preferred_size_over_max() -> None:
    data = manifest_with(steps__1__batching={"maxBatchSize": 4, "preferredBatchSizes": [2, 8]})
    assert error_paths(data) == ["spec.steps[1].batching"]


def test_graph_unknown_input_is_named() -> None:
    assert error_paths(manifest_with(steps__2__inputs=["nope"])) == ["spec.steps[2].inputs[0]"]


def test_graph_duplicate_names_are_rejected() -> None:
    assert "spec.steps[2].name" in error_paths(manifest_with(steps__2__name="classify"))


def test_graph_cycle_is_rejected_with_its_path() -> None:
    data = copy.deepcopy(MANIFEST)
    data["spec"]["steps"] = [
        {"name": "a", "op": "topk"},
        {"name": "b", "op": "topk", "inputs": ["a", "c"]},
        {"name": "c", "op": "topk", "inputs": ["b"]},
    ]
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(data)
    assert [(e.path, e.message) for e in info.value.errors] == [("spec.steps[1].inputs", "cycle: b -> c -> b")]


def test_graph_reserved_gateway_name_is_rejected() -> None:
    assert "spec.steps[0].name" in error_paths(manifest_with(steps__0__name="gateway", steps__1__inputs=["gateway"]))


def test_graph_unknown_output_is_rejected() -> None:
    assert error_paths(manifest_with(output="nope")) == ["spec.output"]


def test_topological_order_puts_inputs_first() -> None:
    data = copy.deepcopy(MANIFEST)
    data["spec"]["steps"] = [
        {"name": "a", "op": "topk", "inputs": []},
        {"name": "join", "op": "topk", "inputs": ["b", "c"]},
        {"name": "b", "op": "topk", "inputs": ["a"]},
        {"name": "c", "op": "topk", "inputs": ["a"]},
    ]
    data["spec"]["output"] = "join"
    order = topological_order(parse_manifest(data).spec)
    assert order.index("a") < order.index("b") < order.index("join")
    assert order.index("c") < order.index("join")


def test_step_env_round_trip_and_batching_override() -> None:
    step = parse_manifest(MANIFEST).spec.steps[1]
    env = step_to_env(step)
    assert step_from_env(env) == step
    env["CONVEYOR_MAX_BATCH_SIZE"] = "16"
    assert step_from_env(env).batching.maxBatchSize == 16


def test_step_env_leaves_out_what_a_replica_never_reads() -> None:
    """Scaling settings and the pod's own settings stay out of the step's spec variable: editing them must not roll
    the pods for it, and a literal `pod.env` value (a token, say) must not be written into the pod twice."""
    step = StepSpec.model_validate(
        {
            "name": "s",
            "op": "identity",
            "replicas": 3,
            "autoscaling": {"minReplicas": 1, "maxReplicas": 4},
            "image": "mine:1",
            "pod": {"env": [{"name": "TOKEN", "value": "secret-value"}]},
        }
    )
    raw = step_to_env(step)[STEP_SPEC_ENV]
    assert "secret-value" not in raw and "mine:1" not in raw
    assert set(json.loads(raw)) == {"name", "op"}


def test_step_from_env_reports_missing_and_bad_values() -> None:
    with pytest.raises(InvalidManifest, match=STEP_SPEC_ENV):
        step_from_env({})
    env = step_to_env(parse_manifest(MANIFEST).spec.steps[1])
    env["CONVEYOR_MAX_BATCH_SIZE"] = "lots"
    with pytest.raises(InvalidManifest, match="CONVEYOR_MAX_BATCH_SIZE"):
        step_from_env(env)
    env["CONVEYOR_MAX_BATCH_SIZE"] = "-3"
    with pytest.raises(InvalidManifest, match=r"step\.batching\.maxBatchSize"):
        step_from_env(env)


def test_load_manifest_reports_yaml_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidManifest, match="cannot read"):
        load_manifest(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    with pytest.raises(InvalidManifest, match="not valid YAML"):
        load_manifest(bad)
    other = tmp_path / "other.yaml"
    other.write_text("kind: ConfigMap\n")
    with pytest.raises(InvalidManifest, match="expected one InferencePipeline"):
        load_manifest(other)


def test_spec_builtin_op_names_match_the_ops_registry() -> None:
    from conveyor_runtime.ops import BUILTIN_OPS

    assert set(BUILTIN_OP_NAMES) == set(BUILTIN_OPS)


@pytest.mark.parametrize("op", ["identity", "image-preprocess", "preprocess", "topk", "my_pkg.ops:Resize", "m:C"])
def test_parse_manifest_accepts_builtin_ops_and_import_references(op: str) -> None:
    assert parse_manifest(manifest_with(steps__0__op=op)).spec.steps[0].op == op


@pytest.mark.parametrize("op", ["resize", "softmax", "pkg.module", "pkg.module:", ":Class", "pkg-x.mod:Class"])
def test_parse_manifest_rejects_an_unknown_builtin_op_naming_the_field(op: str) -> None:
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(manifest_with(steps__0__op=op))
    [error] = info.value.errors
    assert error.path == "spec.steps[0].op"
    assert "built-ins: identity, image-preprocess, preprocess, topk" in error.message
    assert "package.module:Class" in error.message and repr(op) in error.message


@pytest.mark.parametrize("config", [{"size": 224}, {}])
def test_parse_manifest_rejects_config_on_a_model_step(config: dict[str, Any]) -> None:
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(manifest_with(steps__1__config=config))
    assert [(e.path, e.message) for e in info.value.errors] == [
        ("spec.steps[1].config", "only op steps take `config`; a model step's settings go under `model`")
    ]


def test_parse_manifest_accepts_its_own_full_dump() -> None:
    """A dump with every default written out is what the gateway's ConfigMap holds: a model step's has no `config`."""
    manifest = parse_manifest(MANIFEST)
    dumped = manifest.model_dump(mode="json", exclude_none=True)
    assert "config" not in dumped["spec"]["steps"][1] and dumped["spec"]["steps"][2]["config"] == {}
    assert parse_manifest(dumped) == manifest


def test_parse_manifest_rejects_an_unknown_top_level_field_naming_it() -> None:
    data = {**copy.deepcopy(MANIFEST), "specs": {}}
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(data)
    assert [(e.path, e.message) for e in info.value.errors] == [
        ("specs", "unknown field; known fields: apiVersion, kind, metadata, spec, status")
    ]


def test_parse_manifest_names_the_known_fields_of_a_nested_model() -> None:
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(manifest_with(steps__1__batching__maxBatch=4))
    [error] = info.value.errors
    assert error.path == "spec.steps[1].batching.maxBatch"
    assert error.message.startswith("unknown field; known fields: maxBatchSize, maxQueueDelayMicroseconds,")


def test_parse_manifest_accepts_what_the_api_server_adds_to_a_custom_resource() -> None:
    data = copy.deepcopy(MANIFEST)
    data["metadata"].update(
        namespace="prod",
        uid="0b6c2b8e-5f55-4a8e-9a7e-6b3c1d2e4f50",
        resourceVersion="4711",
        generation=3,
        creationTimestamp="2024-01-01T00:00:00Z",
        labels={"team": "vision"},
        annotations={"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        managedFields=[{"manager": "kubectl", "operation": "Apply"}],
        finalizers=[],
    )
    data["status"] = {"observedGeneration": 3, "conditions": []}
    manifest = parse_manifest(data)
    assert manifest.metadata.name == "defects" and manifest.metadata.namespace == "prod"


@pytest.mark.parametrize("name", ["1defects", "-defects", "Defects", "defects-", "de.fects", "d" * 41])
def test_parse_manifest_rejects_a_pipeline_name_that_is_not_a_dns1035_label(name: str) -> None:
    with pytest.raises(InvalidManifest) as info:
        parse_manifest({**copy.deepcopy(MANIFEST), "metadata": {"name": name}})
    [error] = info.value.errors
    assert error.path == "metadata.name"
    assert "DNS-1035" in error.message or "at most 40" in error.message


def test_parse_manifest_rejects_a_step_whose_service_name_exceeds_63_characters() -> None:
    data = manifest_with(steps__2__name="s" * 30)
    data["metadata"]["name"] = "p" * 32  # 'p'*32 + '-' + 's'*30 = 63: fits
    parse_manifest(data)
    data["metadata"]["name"] = "p" * 33
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(data)
    assert [(e.path, e.message) for e in info.value.errors] == [
        (
            "spec.steps[2].name",
            f"the step's Service name {'p' * 33 + '-' + 's' * 30!r} (<metadata.name>-<step name>) is 64 characters; "
            "Kubernetes allows 63: shorten the step or the pipeline name",
        )
    ]


def test_a_step_takes_one_autoscaler() -> None:
    body = copy.deepcopy(MANIFEST)
    body["spec"]["steps"][1].update(externalAutoscaler=True, autoscaling={"maxReplicas": 4})
    with pytest.raises(InvalidManifest) as caught:
        parse_manifest(body)
    assert {e.path: e.message for e in caught.value.errors} == {"spec.steps[1].autoscaling": TWO_AUTOSCALERS_RULE}
