"""The execution plan of a pipeline's DAG: which steps run, in what order, and which tensors each one receives.

Routing rule (tensors flow by name): the entry step receives the request's tensors. A step with one upstream
step that gave exactly one tensor, and that itself takes exactly one input, gets that tensor under its own input
name whatever the two names are. Otherwise (joins, multi-tensor edges) a step receives every upstream output by
name; two upstream steps giving the same tensor name is an error, and names the step does not take are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .errors import StepFailed
from .spec import PipelineManifest, StepSpec, output_step, step_inputs, topological_order

__all__ = ["StepNode", "ExecutionPlan", "route_inputs"]

T = TypeVar("T")


@dataclass(frozen=True)
class StepNode:
    """One step of the plan: its spec, its upstream steps and the steps that consume its outputs."""

    spec: StepSpec
    inputs: tuple[str, ...]
    consumers: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class ExecutionPlan:
    """The steps a request runs through, in an order where every step follows its inputs."""

    pipeline: str
    nodes: Mapping[str, StepNode]
    order: tuple[str, ...]
    entry: str
    output: str

    @classmethod
    def from_manifest(cls, manifest: PipelineManifest) -> ExecutionPlan:
        """Plan a validated manifest; steps that do not lead to the output step are left out."""
        spec = manifest.spec
        inputs = step_inputs(spec)
        output = output_step(spec)
        needed: set[str] = set()
        pending = [output]
        while pending:
            name = pending.pop()
            if name not in needed:
                needed.add(name)
                pending.extend(inputs[name])
        order = tuple(name for name in topological_order(spec) if name in needed)
        by_name = {step.name: step for step in spec.steps}
        nodes = {
            name: StepNode(
                spec=by_name[name],
                inputs=tuple(inputs[name]),
                consumers=tuple(other for other in order if name in inputs[other]),
            )
            for name in order
        }
        entries = [name for name in order if not nodes[name].inputs]
        return cls(pipeline=manifest.metadata.name, nodes=nodes, order=order, entry=entries[0], output=output)

    @property
    def is_chain(self) -> bool:
        """True when every step has at most one input and one consumer (run one after another)."""
        return all(len(n.inputs) <= 1 and len(n.consumers) <= 1 for n in self.nodes.values())


def route_inputs(
    step: str,
    upstream: Sequence[tuple[str, Mapping[str, T]]],
    expected: Sequence[str] | None,
) -> dict[str, T]:
    """The tensors `step` receives from its upstream steps' outputs ``[(step name, {tensor name: tensor})]``.

    `expected` is the step's input names when known (from its metadata); see the module docstring for the rule.
    """
    if len(upstream) == 1 and len(upstream[0][1]) == 1 and expected is not None and len(expected) == 1:
        (tensor,) = upstream[0][1].values()
        return {expected[0]: tensor}
    merged: dict[str, T] = {}
    source: dict[str, str] = {}
    for name, outputs in upstream:
        for tensor_name, tensor in outputs.items():
            if tensor_name in merged:
                raise StepFailed(
                    f"step {step!r}: input {tensor_name!r} comes from both {source[tensor_name]!r} and {name!r}; "
                    "give the upstream outputs distinct names"
                )
            merged[tensor_name] = tensor
            source[tensor_name] = name
    if expected is not None:
        wanted = set(expected)
        kept = {k: v for k, v in merged.items() if k in wanted}
        if kept:
            return kept
    return merged
