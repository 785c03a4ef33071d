"""Degraded from the step pods themselves: a container that cannot start is named with its own error."""

from __future__ import annotations

from typing import Any

from conveyor_operator.status import POD_MESSAGE_LIMIT, DeploymentState, compute_status, pod_failure
from conveyor_runtime.spec import PipelineSpec

SPEC = PipelineSpec.model_validate({"steps": [{"name": "pre", "op": "identity"}, {"name": "cls", "op": "topk", "replicas": 2}]})
T0 = "2026-01-01T00:00:00Z"
ERROR = "ModelLoadError: model file /var/lib/conveyor/m.onnx does not exist; check `model.path` or add `model.build`"


def _pod(name: str, *statuses: dict[str, Any], deleting: bool = False, **status: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = T0
    return {"metadata": meta, "status": {"phase": "Running", "containerStatuses": list(statuses), **status}}


def _crashing(message: str = ERROR) -> dict[str, Any]:
    return {
        "name": "step",
        "ready": False,
        "restartCount": 2,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting failed container=step"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": message}},
    }


def _running(restarts: int = 0) -> dict[str, Any]:
    return {"name": "step", "ready": True, "restartCount": restarts, "state": {"running": {"startedAt": T0}}}


def _deployment(desired: int, ready: int, pods: list[dict[str, Any]] = ()) -> DeploymentState:  # type: ignore[assignment]
    obj = {"metadata": {"generation": 1}, "spec": {"replicas": desired},
           "status": {"observedGeneration": 1, "readyReplicas": ready, "updatedReplicas": desired}}
    return DeploymentState.from_object(obj, pods=pods)


def _conditions(deployments: dict[str, DeploymentState]) -> dict[str, Any]:
    return {c.type: c for c in compute_status("demo", "ml", 1, SPEC, deployments, now=T0).conditions}


def test_status_degraded_names_the_step_and_quotes_its_containers_termination_message() -> None:
    pods = [_pod("demo-cls-7f-a", _crashing()), _pod("demo-cls-7f-b", _crashing())]
    deployments = {"demo-pre": _deployment(1, 1), "demo-cls": _deployment(2, 0, pods), "demo-gateway": _deployment(1, 1)}
    conditions = _conditions(deployments)
    degraded, ready = conditions["Degraded"], conditions["Ready"]
    assert (degraded.status, degraded.reason) == ("True", "StepFailing")
    assert degraded.message == (
        f"step 'cls': pod demo-cls-7f-a: container step: CrashLoopBackOff, last exit code 1: {ERROR} (and 1 more pod)"
    )
    assert (ready.status, ready.reason) == ("False", "StepFailing") and ready.message == degraded.message


def test_pod_failure_reports_a_container_that_exited_before_its_back_off() -> None:
    status = {"name": "step", "ready": False, "restartCount": 0,
              "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": ERROR}}}
    assert pod_failure(_pod("p", status)) == f"pod p: container step: exit code 1: {ERROR}"


def test_pod_failure_keeps_reporting_a_crashed_container_while_it_runs_again_until_it_is_ready() -> None:
    restarted = {**_crashing(), "state": {"running": {"startedAt": T0}}}
    assert pod_failure(_pod("p", restarted)) == f"pod p: container step: restarted, not ready yet, last exit code 1: {ERROR}"
    assert pod_failure(_pod("p", {**restarted, "ready": True})) == ""  # it serves again
    stopped_cleanly = {**restarted, "lastState": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    assert pod_failure(_pod("p", stopped_cleanly)) == ""


def test_pod_failure_reports_an_image_that_cannot_be_pulled_with_the_kubelets_words() -> None:
    status = {"name": "step", "ready": False, "restartCount": 0, "state": {"waiting": {
        "reason": "ErrImageNeverPull", "message": 'Container image "conveyor:nope" is not present with pull policy of Never'}}}
    assert pod_failure(_pod("p", status)) == (
        'pod p: container step: ErrImageNeverPull: Container image "conveyor:nope" is not present with pull policy of Never'
    )


def test_pod_failure_reports_an_unschedulable_pod() -> None:
    pod = _pod("p", phase="Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                  "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}])
    assert pod_failure(pod) == "pod p: Unschedulable: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu."


def test_pod_failure_ignores_healthy_starting_and_terminating_pods() -> None:
    starting = {"name": "step", "ready": False, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}
    stopped = {"name": "step", "ready": False, "restartCount": 0, "state": {"terminated": {"exitCode": 143, "reason": "Error"}}}
    assert pod_failure(_pod("p", _running(restarts=3))) == ""  # it restarted once, and serves now
    assert pod_failure(_pod("p", starting)) == ""
    assert pod_failure(_pod("p", stopped, deleting=True)) == ""  # a rolled-out or deleted pod stopping
    assert pod_failure(_pod("p", _crashing(), deleting=True)) == ""
    assert pod_failure({"metadata": {"name": "p"}}) == ""  # just created: no status yet


def test_pod_failure_clips_a_long_container_message() -> None:
    failure = pod_failure(_pod("p", _crashing("x" * 10_000)))
    assert len(failure) < POD_MESSAGE_LIMIT + 100 and failure.endswith("...")


def test_status_of_a_step_whose_pods_recovered_is_not_degraded() -> None:
    deployments = {"demo-pre": _deployment(1, 1), "demo-cls": _deployment(2, 2, [_pod("a", _running(4)), _pod("b", _running())]),
                   "demo-gateway": _deployment(1, 1)}
    conditions = _conditions(deployments)
    assert conditions["Degraded"].status == "False" and conditions["Ready"].status == "True"
