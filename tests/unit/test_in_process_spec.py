"""In-process edges (`inProcessWith`) in the spec: which hosts are accepted, the field each refusal names, the
guest/host helpers and the host's environment that lists its guests."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor_operator.reconciler import validate_spec
from conveyor_runtime.errors import InvalidManifest
from conveyor_runtime.spec import (
    IN_PROCESS_STEPS_ENV,
    POD_LEVEL_FIELDS,
    PipelineSpec,
    StepSpec,
    graph_errors,
    guests_of,
    host_of,
    in_process_steps_from_env,
    step_from_env,
    step_to_env,
)


def _spec(*steps: dict[str, Any]) -> PipelineSpec:
    return PipelineSpec.model_validate({"steps": list(steps)})


def _errors(spec: PipelineSpec) -> dict[str, str]:
    return {error.path: error.message for error in graph_errors(spec)}


def test_in_process_spec_accepts_a_guest_that_runs_in_its_input() -> None:
    spec = _spec({"name": "pre", "op": "identity"}, {"name": "cls", "op": "identity", "inProcessWith": "pre"})
    assert _errors(spec) == {}


def test_in_process_spec_accepts_a_guest_that_runs_in_the_step_it_feeds() -> None:
    spec = _spec({"name": "pre", "op": "identity", "inProcessWith": "cls"}, {"name": "cls", "op": "identity"})
    assert _errors(spec) == {}


def test_in_process_spec_accepts_a_neighbour_across_a_join() -> None:
    spec = _spec(
        {"name": "src", "op": "identity"},
        {"name": "left", "op": "identity", "inputs": ["src"]},
        {"name": "right", "op": "identity", "inputs": ["src"], "inProcessWith": "join"},
        {"name": "join", "op": "identity", "inputs": ["left", "right"]},
    )
    assert _errors(spec) == {}


def test_in_process_spec_refuses_an_unknown_host_naming_the_field_and_the_known_steps() -> None:
    spec = _spec({"name": "pre", "op": "identity"}, {"name": "cls", "op": "identity", "inProcessWith": "nope"})
    errors = _errors(spec)
    assert list(errors) == ["spec.steps[1].inProcessWith"]
    assert "unknown step 'nope'" in errors["spec.steps[1].inProcessWith"]
    assert "pre, cls" in errors["spec.steps[1].inProcessWith"]


def test_in_process_spec_refuses_a_step_hosting_itself() -> None:
    spec = _spec({"name": "pre", "op": "identity", "inProcessWith": "pre"}, {"name": "cls", "op": "identity"})
    errors = _errors(spec)
    assert list(errors) == ["spec.steps[0].inProcessWith"]
    assert "its own processes" in errors["spec.steps[0].inProcessWith"]


def test_in_process_spec_refuses_a_host_that_is_itself_a_guest_and_names_its_host() -> None:
    spec = _spec(
        {"name": "a", "op": "identity"},
        {"name": "b", "op": "identity", "inProcessWith": "a"},
        {"name": "c", "op": "identity", "inProcessWith": "b"},
    )
    errors = _errors(spec)
    assert list(errors) == ["spec.steps[2].inProcessWith"]
    assert "step 'b' itself runs in the processes of step 'a'" in errors["spec.steps[2].inProcessWith"]
    assert "name 'a' here" in errors["spec.steps[2].inProcessWith"]


def test_in_process_spec_refuses_a_host_that_is_not_a_neighbour() -> None:
    spec = _spec(
        {"name": "a", "op": "identity"},
        {"name": "b", "op": "identity"},
        {"name": "c", "op": "identity", "inProcessWith": "a"},
    )
    errors = _errors(spec)
    assert list(errors) == ["spec.steps[2].inProcessWith"]
    assert "not a neighbour" in errors["spec.steps[2].inProcessWith"]


#: A value away from its default for each pod-level field.
POD_FIELD_CASES = [
    ("replicas", 2),
    ("externalAutoscaler", True),
    ("autoscaling", {"minReplicas": 1, "maxReplicas": 3}),
    ("resources", {"cpu": "1"}),
    ("nodeSelector", {"gpu": "true"}),
    ("tolerations", [{"key": "gpu", "operator": "Exists"}]),
    ("image", "registry/other:1"),
    ("pod", {"serviceAccountName": "reader"}),
]


@pytest.mark.parametrize(("field", "value"), POD_FIELD_CASES)
def test_in_process_spec_refuses_each_pod_level_field_on_a_guest_naming_it_and_the_host(field: str, value: Any) -> None:
    spec = _spec({"name": "pre", "op": "identity"}, {"name": "cls", "op": "identity", "inProcessWith": "pre", field: value})
    errors = _errors(spec)
    assert list(errors) == [f"spec.steps[1].{field}"]
    assert "set it on step 'pre', or remove inProcessWith" in errors[f"spec.steps[1].{field}"]


def test_in_process_spec_pod_level_fields_each_have_a_refusal_case() -> None:
    assert {field for field, _ in POD_FIELD_CASES} == set(POD_LEVEL_FIELDS)


def test_in_process_spec_guests_of_and_host_of() -> None:
    spec = _spec(
        {"name": "pre", "op": "identity", "inProcessWith": "cls"},
        {"name": "cls", "op": "identity"},
        {"name": "post", "op": "identity", "inProcessWith": "cls"},
        {"name": "tail", "op": "identity"},
    )
    assert [step.name for step in guests_of(spec, "cls")] == ["pre", "post"]
    assert guests_of(spec, "tail") == [] and guests_of(spec, "pre") == []
    assert (host_of(spec, "pre"), host_of(spec, "post"), host_of(spec, "cls"), host_of(spec, "tail")) == (
        "cls",
        "cls",
        "cls",
        "tail",
    )


def test_in_process_spec_step_to_env_lists_the_guests_and_reads_back() -> None:
    spec = _spec(
        {"name": "pre", "op": "preprocess", "config": {"size": 32}, "inProcessWith": "cls", "batching": {"maxBatchSize": 8}},
        {"name": "cls", "op": "identity", "replicas": 3},
        {"name": "post", "op": "topk", "inProcessWith": "cls"},
    )
    host = spec.steps[1]
    env = step_to_env(host, guests_of(spec, "cls"))
    assert step_from_env(env) == host.model_copy(update={"replicas": 1})
    guests = in_process_steps_from_env(env)
    assert guests == [spec.steps[0], spec.steps[2]]
    assert guests[0].batching.maxBatchSize == 8 and guests[0].inProcessWith == "cls"


def test_in_process_spec_step_to_env_without_guests_sets_no_list() -> None:
    step = StepSpec(name="cls", op="identity")
    assert IN_PROCESS_STEPS_ENV not in step_to_env(step)
    assert in_process_steps_from_env(step_to_env(step)) == []


def test_in_process_spec_a_bad_list_names_the_variable_and_the_entry() -> None:
    with pytest.raises(InvalidManifest) as raised:
        in_process_steps_from_env({IN_PROCESS_STEPS_ENV: '[{"name": "pre", "op": "identity"}, {"name": "Bad"}]'})
    assert any(error.path.startswith(f"{IN_PROCESS_STEPS_ENV}[1]") for error in raised.value.errors)
    with pytest.raises(InvalidManifest) as raised:
        in_process_steps_from_env({IN_PROCESS_STEPS_ENV: "{not json"})
    assert [error.path for error in raised.value.errors] == [IN_PROCESS_STEPS_ENV]


def _stored_guest(**fields: Any) -> dict[str, Any]:
    """A pipeline whose guest step is as the API server stores it: with the CRD's defaults written in."""
    guest = {
        "name": "pre",
        "op": "identity",
        "inProcessWith": "cls",
        "replicas": 1,
        "externalAutoscaler": False,
        "resources": {"gpu": 0},
        "pod": {},
        **fields,
    }
    return {"steps": [guest, {"name": "cls", "op": "identity", "replicas": 2}]}


def test_in_process_spec_the_operator_accepts_a_guest_with_the_defaults_the_api_server_writes() -> None:
    spec, errors = validate_spec("demo", _stored_guest())
    assert errors == [] and spec is not None
    assert spec.steps[0].inProcessWith == "cls" and spec.steps[0].replicas == 1


def test_in_process_spec_the_operator_still_refuses_a_guest_pod_field_set_to_something_else() -> None:
    spec, errors = validate_spec("demo", _stored_guest(replicas=3, resources={"cpu": "1"}))
    assert spec is None
    assert [error.path for error in errors] == ["spec.steps[0].replicas", "spec.steps[0].resources"]
