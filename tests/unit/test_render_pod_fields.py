"""Pod-spec fields that make real pods behave: where a container's own error shows up."""

from __future__ import annotations

from typing import Any

from conveyor_operator.render import Owner, render_children
from conveyor_runtime.spec import PipelineSpec

OWNER = Owner(name="demo", namespace="ml", uid="0000-1111")
SPEC = PipelineSpec.model_validate({"steps": [{"name": "pre", "op": "identity"}, {"name": "top", "op": "topk", "replicas": 2}]})


def _containers() -> dict[str, dict[str, Any]]:
    deployments = [c for c in render_children(OWNER, SPEC) if c["kind"] == "Deployment"]
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0] for d in deployments}


def test_render_containers_report_their_own_error_as_the_termination_message() -> None:
    containers = _containers()
    assert set(containers) == {"demo-pre", "demo-top", "demo-gateway"}
    for name, container in containers.items():
        # The step writes its startup error to the default path; anything else that kills it falls back to the log's tail.
        assert container.get("terminationMessagePolicy") == "FallbackToLogsOnError", name
        assert container.get("terminationMessagePath", "/dev/termination-log") == "/dev/termination-log", name


def _gateway_template(spec: PipelineSpec) -> dict[str, Any]:
    (gateway,) = [c for c in render_children(OWNER, spec) if c["kind"] == "Deployment" and c["metadata"]["name"] == "demo-gateway"]
    template: dict[str, Any] = gateway["spec"]["template"]
    return template


def test_render_a_steps_batching_resources_or_placement_leave_the_gateway_pods_alone() -> None:
    # The gateway reads only the graph (names, inputs, output) and its own settings: editing a step's batching must
    # roll that step's pods only (issue 13 item 5), not the gateway's.
    before = _gateway_template(SPEC)
    edits = {
        "batching": {"maxBatchSize": 4, "maxQueueDelayMicroseconds": 900},
        "resources": {"cpu": "500m", "memory": "256Mi"},
        "nodeSelector": {"disk": "ssd"},
        "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
    }
    for field, value in edits.items():
        steps = [SPEC.steps[0].model_dump(), {**SPEC.steps[1].model_dump(), field: value}]
        edited = PipelineSpec.model_validate({"steps": steps})
        assert _gateway_template(edited) == before, field
