"""Status of a pipeline with a step that runs in another step's processes (`inProcessWith`): the guest has no
Deployment, shows its host's replicas and says where it runs."""

from __future__ import annotations

from typing import Any

from conveyor_operator.controller import status_changes
from conveyor_operator.crd import status_schema
from conveyor_operator.reconciler import Outcome
from conveyor_operator.status import DeploymentState, compute_status
from conveyor_runtime.spec import PipelineSpec

SPEC = PipelineSpec.model_validate(
    {
        "steps": [
            {"name": "pre", "op": "identity", "inProcessWith": "cls"},
            {"name": "cls", "op": "topk", "replicas": 2},
            {"name": "post", "op": "identity"},
        ]
    }
)
T0 = "2026-01-01T00:00:00Z"


def _deployment(desired: int, ready: int) -> DeploymentState:
    return DeploymentState.from_object(
        {
            "metadata": {"generation": 1},
            "spec": {"replicas": desired},
            "status": {"observedGeneration": 1, "readyReplicas": ready, "updatedReplicas": desired},
        }
    )


def _deployments(cls_ready: int = 2) -> dict[str, DeploymentState]:
    """What the API holds: no Deployment for the guest `pre`."""
    return {"demo-cls": _deployment(2, cls_ready), "demo-post": _deployment(1, 1), "demo-gateway": _deployment(1, 1)}


def _conditions(status: Any) -> dict[str, Any]:
    return {c.type: c for c in status.conditions}


def test_status_in_process_guest_without_a_deployment_is_ready_with_its_host() -> None:
    status = compute_status("demo", "ml", 1, SPEC, _deployments(), now=T0)
    conditions = _conditions(status)
    assert (conditions["Ready"].status, conditions["Ready"].reason) == ("True", "AllStepsReady")
    assert (conditions["Progressing"].status, conditions["Progressing"].reason) == ("False", "RolloutComplete")
    assert conditions["Degraded"].status == "False"
    assert "missing" not in " ".join(c.message for c in status.conditions)


def test_status_in_process_guest_shows_its_hosts_replicas_and_where_it_runs() -> None:
    status = compute_status("demo", "ml", 1, SPEC, _deployments(cls_ready=1), now=T0)
    steps = {s.name: s for s in status.steps}
    assert (steps["pre"].desired, steps["pre"].ready, steps["pre"].updated) == (2, 1, 2)
    assert (steps["pre"].deployment, steps["pre"].inProcessWith) == ("demo-cls", "cls")
    assert (steps["cls"].deployment, steps["cls"].inProcessWith) == ("demo-cls", None)
    assert steps["post"].inProcessWith is None


def test_status_in_process_replicas_count_the_hosts_pods_once() -> None:
    status = compute_status("demo", "ml", 1, SPEC, _deployments(cls_ready=1), now=T0)
    assert status.replicas == "2/3"  # cls 1/2 and post 1/1; pre runs in cls's pods
    assert status.stepCount == 3


def test_status_in_process_a_host_not_ready_names_the_host_not_the_guest() -> None:
    status = compute_status("demo", "ml", 1, SPEC, _deployments(cls_ready=1), now=T0)
    conditions = _conditions(status)
    assert (conditions["Ready"].reason, conditions["Ready"].message) == ("StepsNotReady", "step 'cls': 1/2 replicas ready")
    assert conditions["Progressing"].message == "step 'cls': 1/2 replicas ready"


def test_status_in_process_a_guest_while_its_host_is_missing_shows_the_specs_replicas() -> None:
    deployments = {k: v for k, v in _deployments().items() if k != "demo-cls"}
    status = compute_status("demo", "ml", 1, SPEC, deployments, now=T0)
    steps = {s.name: s for s in status.steps}
    assert (steps["pre"].desired, steps["pre"].ready) == (2, 0)
    assert _conditions(status)["Ready"].message == "step 'cls': Deployment is missing"


def test_status_in_process_entry_is_in_the_crd_status_schema_and_absent_for_other_steps() -> None:
    status = compute_status("demo", "ml", 1, SPEC, _deployments(), now=T0)
    item = status_schema()["properties"]["steps"]["items"]["properties"]
    assert item["inProcessWith"]["type"] == "string"
    written = status_changes(Outcome(status=status), {})["steps"]
    assert written[0] == {"name": "pre", "deployment": "demo-cls", "desired": 2, "ready": 2, "updated": 2, "inProcessWith": "cls"}
    assert all("inProcessWith" not in entry for entry in written[1:])
    assert all(set(entry) <= set(item) for entry in written)
