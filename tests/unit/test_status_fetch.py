"""A step whose model cannot be fetched: the init container's own words reach the Degraded condition."""

from __future__ import annotations

from typing import Any

from conveyor_operator.status import DeploymentState, compute_status, pod_failure
from conveyor_runtime.spec import PipelineSpec

SPEC = PipelineSpec.model_validate({"steps": [{"name": "classify", "model": {"uri": "s3://models/x.onnx"}}]})
T0 = "2026-01-01T00:00:00Z"
WHY = "step classify: s3://models/x.onnx: 403 AccessDenied"
WAITING_FOR_INIT = {"name": "step", "ready": False, "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}


def _pod(fetch: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "demo-classify-7f-a"},
        "status": {"phase": "Pending", "initContainerStatuses": [fetch], "containerStatuses": [WAITING_FOR_INIT]},
    }


def test_pod_failure_quotes_a_failed_fetchs_termination_message() -> None:
    fetch = {"name": "fetch", "ready": False, "restartCount": 0,
             "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": WHY}}}
    assert pod_failure(_pod(fetch)) == f"pod demo-classify-7f-a: container fetch: exit code 1: {WHY}"


def test_pod_failure_quotes_a_fetch_in_crash_loop_back_off() -> None:
    fetch = {"name": "fetch", "ready": False, "restartCount": 3,
             "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container=fetch"}},
             "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": WHY}}}
    assert pod_failure(_pod(fetch)) == f"pod demo-classify-7f-a: container fetch: CrashLoopBackOff, last exit code 1: {WHY}"


def test_pod_failure_says_nothing_while_the_fetch_runs() -> None:
    fetch = {"name": "fetch", "ready": False, "restartCount": 0, "state": {"running": {"startedAt": T0}}}
    assert pod_failure(_pod(fetch)) == ""


def test_status_degraded_names_the_step_and_the_fetchs_reason() -> None:
    fetch = {"name": "fetch", "ready": False, "restartCount": 0,
             "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": WHY}}}
    obj = {"metadata": {"generation": 1}, "spec": {"replicas": 1},
           "status": {"observedGeneration": 1, "readyReplicas": 0, "updatedReplicas": 1}}
    deployments = {"demo-classify": DeploymentState.from_object(obj, pods=[_pod(fetch)]),
                   "demo-gateway": DeploymentState.from_object({**obj, "status": {**obj["status"], "readyReplicas": 1}})}
    conditions = {c.type: c for c in compute_status("demo", "ml", 1, SPEC, deployments, now=T0).conditions}
    assert conditions["Degraded"].status == "True"
    assert conditions["Degraded"].message == f"step 'classify': pod demo-classify-7f-a: container fetch: exit code 1: {WHY}"
