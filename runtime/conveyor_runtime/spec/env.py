"""A step's spec in its pod's environment: the whole spec as JSON, plus its batching settings as plain variables.

The CR stays the source of truth: the operator renders these variables and puts back a hand-set value (with a
`Reverted` event naming the field to edit). Outside a cluster, `conveyor step` reads them over the JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from pydantic import ValidationError

from ..errors import FieldError, InvalidManifest
from .manifest import validation_field_errors
from .model import StepSpec

__all__ = ["BATCHING_ENV", "STEP_SPEC_ENV", "step_from_env", "step_to_env"]

STEP_SPEC_ENV = "CONVEYOR_STEP_SPEC"
#: Batching settings as variables (readable in `kubectl describe pod`); when set, they win over the JSON.
BATCHING_ENV = {
    "maxBatchSize": "CONVEYOR_MAX_BATCH_SIZE",
    "maxQueueDelayMicroseconds": "CONVEYOR_MAX_QUEUE_DELAY_US",
    "maxQueueSize": "CONVEYOR_MAX_QUEUE_SIZE",
}


def step_to_env(step: StepSpec) -> dict[str, str]:
    """The environment that hands a step its spec: the spec as JSON plus readable batching knobs.

    Everything but what a replica never reads: `replicas` (scaling a step then leaves its pod template alone, so no
    pod restarts), `externalAutoscaler`, `autoscaling`, and its `image` and `pod` settings (already in the pod itself; a literal `pod.env`
    value such as a token would otherwise be written twice).
    """
    env = {
        STEP_SPEC_ENV: step.model_dump_json(exclude_defaults=True, exclude={"replicas", "externalAutoscaler", "autoscaling", "image", "pod"})
    }
    for field, var in BATCHING_ENV.items():
        env[var] = str(getattr(step.batching, field))
    return env


def step_from_env(environ: Mapping[str, str] | None = None) -> StepSpec:
    """Read a step's spec from the environment; batching variables, if set, override the JSON."""
    environ = os.environ if environ is None else environ
    raw = environ.get(STEP_SPEC_ENV)
    if not raw:
        raise InvalidManifest([FieldError(STEP_SPEC_ENV, "not set: a step needs its spec as JSON in this variable")])
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidManifest([FieldError(STEP_SPEC_ENV, f"not valid JSON: {exc}")]) from None
    if not isinstance(data, dict):
        raise InvalidManifest([FieldError(STEP_SPEC_ENV, "must be a JSON object")])
    batching = dict(data.get("batching") or {})
    for field, var in BATCHING_ENV.items():
        if environ.get(var):
            try:
                batching[field] = int(environ[var])
            except ValueError:
                raise InvalidManifest([FieldError(var, f"must be an integer, got {environ[var]!r}")]) from None
    data["batching"] = batching
    try:
        return StepSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidManifest(validation_field_errors(exc, prefix="step")) from None
