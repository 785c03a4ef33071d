"""The pipeline's step graph: the rules a manifest's DAG must meet, its execution plan, and how tensors route.

Routing rule (tensors flow by name): the entry step receives the request's tensors. A step with one upstream
step that gave exactly one tensor, and that itself takes exactly one input, gets that tensor under its own input
name whatever the two names are. Otherwise (joins, multi-tensor edges) a step receives every upstream output by
name; two upstream steps giving the same tensor name is an error, and names the step does not take are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ..errors import FieldError, InvalidManifest, StepFailed
from .in_process import in_process_errors
from .model import PipelineManifest, PipelineSpec, StepSpec
from .names import GATEWAY_STEP_NAME

__all__ = [
    "ExecutionPlan",
    "StepNode",
    "graph_errors",
    "output_step",
    "route_inputs",
    "step_inputs",
    "topological_order",
]


T = TypeVar("T")


def step_inputs(spec: PipelineSpec) -> dict[str, list[str]]:
    """Each step's upstream step names, with the `inputs` default (previous step) applied."""
    result: dict[str, list[str]] = {}
    for index, step in enumerate(spec.steps):
        if step.inputs is not None:
            result[step.name] = list(step.inputs)
        else:
            result[step.name] = [spec.steps[index - 1].name] if index > 0 else []
    return result


def output_step(spec: PipelineSpec) -> str:
    """The step whose outputs answer a request."""
    return spec.output or spec.steps[-1].name


def graph_errors(spec: PipelineSpec, prefix: str = "spec") -> list[FieldError]:
    """Rules the schema cannot express: unique names, known inputs, one entry step, no cycles, in-process edges."""
    errors: list[FieldError] = []
    seen: dict[str, int] = {}
    for index, step in enumerate(spec.steps):
        if step.name in seen:
            errors.append(
                FieldError(f"{prefix}.steps[{index}].name", f"duplicate step name {step.name!r} (also steps[{seen[step.name]}])")
            )
        seen.setdefault(step.name, index)
    for index, step in enumerate(spec.steps):
        for j, name in enumerate(step.inputs or []):
            where = f"{prefix}.steps[{index}].inputs[{j}]"
            if name not in seen:
                errors.append(FieldError(where, f"unknown step {name!r}; known steps: {', '.join(seen)}"))
            elif name == step.name:
                errors.append(FieldError(where, "a step cannot be its own input"))
        if step.inputs is not None and len(set(step.inputs)) != len(step.inputs):
            errors.append(FieldError(f"{prefix}.steps[{index}].inputs", "lists a step more than once"))
        if step.name == GATEWAY_STEP_NAME:
            errors.append(FieldError(f"{prefix}.steps[{index}].name", f"{GATEWAY_STEP_NAME!r} is reserved for the pipeline's gateway"))
    if spec.output is not None and spec.output not in seen:
        errors.append(FieldError(f"{prefix}.output", f"unknown step {spec.output!r}"))
    if errors:
        return errors
    inputs = step_inputs(spec)
    entries = [s.name for s in spec.steps if not inputs[s.name]]
    if len(entries) != 1:
        errors.append(
            FieldError(f"{prefix}.steps", f"exactly one step may have no inputs (it receives the request), found {entries}")
        )
    cycle = _find_cycle(inputs)
    if cycle:
        first = next(i for i, s in enumerate(spec.steps) if s.name == cycle[0])
        errors.append(FieldError(f"{prefix}.steps[{first}].inputs", "cycle: " + " -> ".join(cycle + [cycle[0]])))
    return errors + in_process_errors(spec, inputs, prefix)


def _find_cycle(inputs: Mapping[str, list[str]]) -> list[str]:
    """A cycle in the step graph as a list of names, or [] when the graph is acyclic."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(name: str) -> list[str]:
        state[name] = 1
        stack.append(name)
        for upstream in inputs.get(name, []):
            if state.get(upstream) == 1:
                return stack[stack.index(upstream) :]
            if upstream not in state:
                found = visit(upstream)
                if found:
                    return found
        stack.pop()
        state[name] = 2
        return []

    for name in inputs:
        if name not in state:
            found = visit(name)
            if found:
                return found
    return []


def topological_order(spec: PipelineSpec) -> list[str]:
    """Step names so that every step comes after all of its inputs (stable for the manifest's order)."""
    inputs = step_inputs(spec)
    done: list[str] = []
    remaining = [s.name for s in spec.steps]
    while remaining:
        ready = [n for n in remaining if all(u in done for u in inputs[n])]
        if not ready:
            raise InvalidManifest([FieldError("spec.steps", "the step graph has a cycle")])
        done.extend(ready)
        remaining = [n for n in remaining if n not in ready]
    return done



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

    def chain_after(self, step: str) -> tuple[str, ...]:
        """The steps that follow `step` in a chain: each the only consumer of the one before and fed by it alone.

        A request can be forwarded from `step` through all of them with nothing to join or fan out; the chain
        ends before a join or after a fan-out (and at the output step, which feeds nothing).
        """
        chain: list[str] = []
        node = self.nodes[step]
        while len(node.consumers) == 1 and len(self.nodes[node.consumers[0]].inputs) == 1:
            node = self.nodes[node.consumers[0]]
            chain.append(node.name)
        return tuple(chain)

    def chain_heads(self) -> list[str]:
        """The steps that start a chain (see `chain_after`), in plan order; every step is in exactly one chain."""
        inside = {name for head in self.order for name in self.chain_after(head)}
        return [name for name in self.order if name not in inside]

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
