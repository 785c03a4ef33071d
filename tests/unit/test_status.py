"""Status conditions computed from the spec and the observed Deployments."""

from __future__ import annotations

from typing import Any

from conveyor_operator.status import DeploymentState, compute_status, invalid_status
from conveyor_runtime.errors import FieldError
from conveyor_runtime.spec import PipelineSpec

SPEC = PipelineSpec.model_validate({"steps": [{"name": "pre", "op": "identity"}, {"name": "cls", "op": "topk", "replicas": 2}]})
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def _deployment(desired: int, ready: int, *, generation: int = 1, observed: int = 1, **status: Any) -> DeploymentState:
    return DeploymentState.from_object(
        {
            "metadata": {"generation": generation},
            "spec": {"replicas": desired},
            "status": {"observedGeneration": observed, "readyReplicas": ready, "updatedReplicas": desired, **status},
        }
    )


def _conditions(status: Any) -> dict[str, Any]:
    return {c.type: c for c in status.conditions}


def _all_ready() -> dict[str, DeploymentState]:
    return {"demo-pre": _deployment(1, 1), "demo-cls": _deployment(2, 2), "demo-gateway": _deployment(1, 1)}


def test_status_all_ready() -> None:
    status = compute_status("demo", "ml", 3, SPEC, _all_ready(), now=T0)
    conditions = _conditions(status)
    assert (conditions["Ready"].status, conditions["Ready"].reason) == ("True", "AllStepsReady")
    assert conditions["Progressing"].status == "False" and conditions["Degraded"].status == "False"
    assert status.observedGeneration == 3 and status.replicas == "3/3" and status.stepCount == 2
    assert status.endpoint == "demo-gateway.ml.svc:8001" and status.httpEndpoint == "http://demo-gateway.ml.svc:8000"
    assert [(s.name, s.desired, s.ready) for s in status.steps] == [("pre", 1, 1), ("cls", 2, 2)]


def test_status_names_the_step_that_is_not_ready() -> None:
    deployments = {**_all_ready(), "demo-cls": _deployment(2, 1)}
    conditions = _conditions(compute_status("demo", "ml", 1, SPEC, deployments, now=T0))
    assert (conditions["Ready"].status, conditions["Ready"].reason) == ("False", "StepsNotReady")
    assert "step 'cls': 1/2 replicas ready" in conditions["Ready"].message
    assert conditions["Progressing"].status == "True" and "cls" in conditions["Progressing"].message


def test_status_waits_for_the_deployment_controller_to_observe_the_generation() -> None:
    deployments = {**_all_ready(), "demo-pre": _deployment(1, 1, generation=2, observed=1)}
    conditions = _conditions(compute_status("demo", "ml", 1, SPEC, deployments, now=T0))
    assert conditions["Ready"].status == "False" and "pre" in conditions["Ready"].message


def test_status_missing_deployment_counts_as_not_ready() -> None:
    deployments = {k: v for k, v in _all_ready().items() if k != "demo-gateway"}
    conditions = _conditions(compute_status("demo", "ml", 1, SPEC, deployments, now=T0))
    assert conditions["Ready"].status == "False" and "gateway: Deployment is missing" in conditions["Ready"].message


def test_status_degraded_names_the_failing_step() -> None:
    failing = _deployment(
        2, 0, conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                           "message": "ReplicaSet has timed out progressing."}]
    )
    conditions = _conditions(compute_status("demo", "ml", 1, SPEC, {**_all_ready(), "demo-cls": failing}, now=T0))
    assert (conditions["Degraded"].status, conditions["Degraded"].reason) == ("True", "StepFailing")
    assert "step 'cls'" in conditions["Degraded"].message and "timed out" in conditions["Degraded"].message
    assert conditions["Ready"].reason == "StepFailing"


def test_status_scaled_to_zero_is_not_ready() -> None:
    deployments = {**_all_ready(), "demo-pre": _deployment(0, 0)}
    conditions = _conditions(compute_status("demo", "ml", 1, SPEC, deployments, now=T0))
    assert (conditions["Ready"].status, conditions["Ready"].reason) == ("False", "ScaledToZero")


def test_status_keeps_transition_time_while_status_is_unchanged() -> None:
    first = compute_status("demo", "ml", 1, SPEC, _all_ready(), now=T0)
    previous = [c.model_dump() for c in first.conditions]
    again = _conditions(compute_status("demo", "ml", 1, SPEC, _all_ready(), now=T1, previous=previous))
    assert again["Ready"].lastTransitionTime == T0
    flipped = _conditions(
        compute_status("demo", "ml", 2, SPEC, {**_all_ready(), "demo-pre": _deployment(1, 0)}, now=T1, previous=previous)
    )
    assert flipped["Ready"].lastTransitionTime == T1 and flipped["Degraded"].lastTransitionTime == T0


def test_invalid_status_is_degraded_with_the_field_path() -> None:
    errors = [FieldError("spec.steps[0].inputs", "cycle: a -> b -> a"), FieldError("spec.output", "unknown step 'x'")]
    status = invalid_status(4, errors, step_count=2, now=T0)
    conditions = _conditions(status)
    assert (conditions["Degraded"].status, conditions["Degraded"].reason) == ("True", "InvalidSpec")
    assert conditions["Degraded"].message == "spec.steps[0].inputs: cycle: a -> b -> a; spec.output: unknown step 'x'"
    assert conditions["Ready"].status == "False" and conditions["Progressing"].status == "False"
    assert status.observedGeneration == 4 and status.steps == [] and status.gateway is None


def test_status_model_dump_matches_the_crd_status_schema() -> None:
    from conveyor_operator.crd import status_schema

    dumped = compute_status("demo", "ml", 1, SPEC, _all_ready(), now=T0).model_dump(mode="json")
    assert set(dumped) <= set(status_schema()["properties"])


def test_status_apply_failure_is_degraded_naming_the_child_and_the_api_message() -> None:
    failure = "Deployment demo-cls (step 'cls'): Deployment.apps \"demo-cls\" is invalid: spec.template...: must be empty"
    deployments = {k: v for k, v in _all_ready().items() if k != "demo-cls"}
    conditions = _conditions(compute_status("demo", "ml", 1, SPEC, deployments, now=T0, apply_failures=[failure]))
    assert (conditions["Degraded"].status, conditions["Degraded"].reason) == ("True", "ApplyFailed")
    assert conditions["Degraded"].message == failure
    assert (conditions["Ready"].status, conditions["Ready"].reason) == ("False", "ApplyFailed")
    assert conditions["Ready"].message == failure
