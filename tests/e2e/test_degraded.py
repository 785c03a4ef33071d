"""Issue 13 item 8 on real pods: steps that cannot start (an op that cannot be imported, a missing model file, a bad op
config) turn the pipeline Degraded within 30 s, the message naming each step and quoting its container's own error
(its termination message), not just "not ready"."""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.fixtures_pods import conveyor, conveyor_image, helm, make_pipeline  # noqa: F401 - fixtures
from tests.support.pods import wait_for

#: The issue's own bound, from `kubectl apply` to Degraded.
DEGRADED_WITHIN_S = 30.0

BROKEN = {
    "apiVersion": "conveyor.dev/v1alpha1",
    "kind": "InferencePipeline",
    "metadata": {"name": "broken"},
    "spec": {
        "steps": [
            {"name": "nowhere", "op": "conveyor_nosuch.ops:Missing"},
            {"name": "nomodel", "model": {"path": "models/absent.onnx"}},
            {"name": "badconfig", "op": "topk", "config": {"k": "many"}},
        ]
    },
}
#: What each step's container says (the step's own error line), as quoted in the condition.
SAYS = {
    "nowhere": "ModelLoadError: step 'nowhere': op 'conveyor_nosuch.ops:Missing': ",
    "nomodel": "ModelLoadError: model file /var/lib/conveyor/models/absent.onnx does not exist",
    "badconfig": "ModelLoadError: step 'badconfig': op 'topk': config.k: must be a positive integer, got 'many'",
}


def test_steps_that_cannot_start_turn_the_pipeline_degraded_within_30s_quoting_their_containers(
    make_pipeline: Any,
) -> None:
    started = time.monotonic()
    pipeline = make_pipeline(BROKEN)

    def degraded_naming_every_step() -> dict[str, Any] | None:
        condition = pipeline.conditions().get("Degraded") or {}
        message = condition.get("message", "")
        named = all(f"step '{step}': pod broken-{step}-" in message and says in message for step, says in SAYS.items())
        return condition if condition.get("status") == "True" and named else None

    condition = wait_for(degraded_naming_every_step, 120, "Degraded naming every broken step with its error", interval=0.5)
    took = time.monotonic() - started
    print(f"Degraded after {took:.1f}s: {condition['message']}")
    assert condition["reason"] == "StepFailing"
    assert took <= DEGRADED_WITHIN_S, f"Degraded only after {took:.1f}s: {condition}"
    ready = pipeline.conditions()["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "StepFailing"
