"""In-process edges: steps that run inside the processes of a neighbouring step (`inProcessWith`).

Such a step (a guest) keeps its own name, tensors, batching and metrics, but has no pods or replicas of its own: every
process of its host step serves it too, so tensors between the two are handed over in memory. A guest's pod
settings would be ignored, so they are refused and belong on the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import FieldError, UsageError
from .model import PipelineSpec, StepSpec

__all__ = ["POD_LEVEL_FIELDS", "HostedSteps", "guests_of", "host_of", "hosted_steps", "in_process_errors"]

#: What only a step with pods of its own can use.
POD_LEVEL_FIELDS = (
    "replicas",
    "externalAutoscaler",
    "autoscaling",
    "resources",
    "nodeSelector",
    "tolerations",
    "image",
    "pod",
)


def host_of(spec: PipelineSpec, step: str) -> str:
    """The step whose processes serve `step`: its `inProcessWith`, else the step itself."""
    for candidate in spec.steps:
        if candidate.name == step:
            return candidate.inProcessWith or step
    return step


def guests_of(spec: PipelineSpec, host: str) -> list[StepSpec]:
    """The steps that run inside `host`'s processes, in manifest order."""
    return [step for step in spec.steps if step.inProcessWith == host]


@dataclass(frozen=True)
class HostedSteps:
    """A step with processes of its own and the steps that run in them, each with its field path for errors."""

    spec: StepSpec
    where: str
    guests: list[StepSpec]
    guests_where: list[str]


def hosted_steps(spec: PipelineSpec, name: str, source: str) -> HostedSteps:
    """What a process that serves step `name` of `source` (a manifest's path) serves; a `UsageError` (about
    ``--step``) when there is no such step or it runs in another step's processes."""
    for index, step in enumerate(spec.steps):
        if step.name != name:
            continue
        if step.inProcessWith is not None:
            raise UsageError(
                f"--step {name}: this step runs in the processes of step {step.inProcessWith!r} (inProcessWith); "
                f"serve --step {step.inProcessWith}, which serves both"
            )
        guests = [(i, s) for i, s in enumerate(spec.steps) if s.inProcessWith == name]
        return HostedSteps(step, f"spec.steps[{index}]", [s for _, s in guests], [f"spec.steps[{i}]" for i, _ in guests])
    names = ", ".join(s.name for s in spec.steps)
    raise UsageError(f"--step: {source} has no step {name!r}; steps: {names}")


def in_process_errors(spec: PipelineSpec, inputs: Mapping[str, list[str]], prefix: str = "spec") -> list[FieldError]:
    """`inProcessWith` names a neighbour (an input of the step or fed by it) that has processes of its own, and the
    step sets no pod-level field away from its default. `inputs` is each step's upstream steps (`graph.step_inputs`)."""
    errors: list[FieldError] = []
    by_name = {step.name: step for step in spec.steps}
    for index, step in enumerate(spec.steps):
        host = step.inProcessWith
        if host is None:
            continue
        where = f"{prefix}.steps[{index}].inProcessWith"
        if host == step.name:
            errors.append(FieldError(where, "a step cannot run in its own processes; name the neighbouring step to run in"))
            continue
        if host not in by_name:
            errors.append(FieldError(where, f"unknown step {host!r}; known steps: {', '.join(by_name)}"))
            continue
        hosts_host = by_name[host].inProcessWith
        if hosts_host is not None:
            errors.append(
                FieldError(
                    where,
                    f"step {host!r} itself runs in the processes of step {hosts_host!r}; name {hosts_host!r} here "
                    "(only a step with processes of its own can host others)",
                )
            )
        if host not in inputs.get(step.name, []) and step.name not in inputs.get(host, []):
            errors.append(
                FieldError(
                    where,
                    f"step {host!r} is not a neighbour of {step.name!r} (neither its input nor fed by it); an "
                    "in-process edge joins two steps that exchange tensors",
                )
            )
        for field in POD_LEVEL_FIELDS:
            # a value, not presence: the API server writes the CRD's defaults (`replicas: 1`, ...) into every step
            if getattr(step, field) != StepSpec.model_fields[field].get_default(call_default_factory=True):
                errors.append(
                    FieldError(
                        f"{prefix}.steps[{index}].{field}",
                        f"this step runs in the pods of step {host!r} (inProcessWith), so its own {field} would be ignored: "
                        f"set it on step {host!r}, or remove inProcessWith",
                    )
                )
    return errors
