"""A step's spec in its pod's environment: the whole spec as JSON, plus its batching settings as plain variables.

The CR stays the source of truth: the operator renders these variables and puts back a hand-set value (with a
`Reverted` event naming the field to edit). Outside a cluster, `conveyor step` reads them over the JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from pydantic import ValidationError

from ..errors import FieldError, InvalidManifest
from .manifest import validation_field_errors
from .model import StepSpec

__all__ = ["BATCHING_ENV", "IN_PROCESS_STEPS_ENV", "STEP_SPEC_ENV", "in_process_steps_from_env", "step_from_env", "step_to_env"]

STEP_SPEC_ENV = "CONVEYOR_STEP_SPEC"
#: The specs of the steps this step's processes also serve (`inProcessWith` it), as a JSON list.
IN_PROCESS_STEPS_ENV = "CONVEYOR_IN_PROCESS_STEPS"
#: What a replica never reads (see `step_to_env`).
_NOT_READ = {"replicas", "externalAutoscaler", "autoscaling", "image", "pod"}
#: Batching settings as variables (readable in `kubectl describe pod`); when set, they win over the JSON.
BATCHING_ENV = {
    "maxBatchSize": "CONVEYOR_MAX_BATCH_SIZE",
    "maxQueueDelayMicroseconds": "CONVEYOR_MAX_QUEUE_DELAY_US",
    "maxQueueSize": "CONVEYOR_MAX_QUEUE_SIZE",
}


def step_to_env(step: StepSpec, in_process: Sequence[StepSpec] = ()) -> dict[str, str]:
    """The environment that hands a step its spec: the spec as JSON plus readable batching knobs.

    Everything but what a replica never reads: `replicas` (scaling a step then leaves its pod template alone, so no
    pod restarts), `externalAutoscaler`, `autoscaling`, and its `image` and `pod` settings (already in the pod itself; a literal `pod.env`
    value such as a token would otherwise be written twice). `in_process` are the steps that run in this step's
    processes (`inProcessWith` it), listed in `IN_PROCESS_STEPS_ENV`.
    """
    env = {STEP_SPEC_ENV: step.model_dump_json(exclude_defaults=True, exclude=_NOT_READ)}
    for field, var in BATCHING_ENV.items():
        env[var] = str(getattr(step.batching, field))
    if in_process:
        dumps = [guest.model_dump(mode="json", exclude_defaults=True, exclude=_NOT_READ) for guest in in_process]
        env[IN_PROCESS_STEPS_ENV] = json.dumps(dumps, separators=(",", ":"))
    return env


def in_process_steps_from_env(environ: Mapping[str, str] | None = None) -> list[StepSpec]:
    """The steps listed in `IN_PROCESS_STEPS_ENV` (none when it is unset)."""
    environ = os.environ if environ is None else environ
    raw = environ.get(IN_PROCESS_STEPS_ENV)
    if not raw:
        return []
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidManifest([FieldError(IN_PROCESS_STEPS_ENV, f"not valid JSON: {exc}")]) from None
    if not isinstance(data, list):
        raise InvalidManifest([FieldError(IN_PROCESS_STEPS_ENV, "must be a JSON list of step specs")])
    steps = []
    for index, item in enumerate(data):
        try:
            steps.append(StepSpec.model_validate(item))
        except ValidationError as exc:
            raise InvalidManifest(validation_field_errors(exc, prefix=f"{IN_PROCESS_STEPS_ENV}[{index}]")) from None
    return steps


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
