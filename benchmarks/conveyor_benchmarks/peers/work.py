"""The pipeline's three steps loaded in a peer's process with the project's own loaders (`load_step_op`): the same op
classes and configs, and the same ONNX file in ONNX Runtime with Conveyor's session settings (threads, no spinning)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from conveyor_runtime.ops import Op, RequestContext, Skip
from conveyor_runtime.spec import StepSpec
from conveyor_runtime.step import load_step_op

from .plan import OpStep, PeerPlan

__all__ = ["answer_labels", "load_classifier", "load_op_step", "run_op"]


def load_op_step(plan: PeerPlan, step: OpStep) -> Op:
    """The op of `step` (preprocess or postprocess), `init`-ed with the manifest's config."""
    return load_step_op(StepSpec(name=step.name, op=step.op, config=step.config), plan.base_dir)


def load_classifier(plan: PeerPlan) -> Op:
    """One classifier instance: the manifest's ONNX file (built first if missing) in one session of Conveyor's
    intra-op threads per instance (`PeerPlan.replica_model`)."""
    return load_step_op(plan.replica_step(), plan.base_dir)


def run_op(op: Op, inputs: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
    """One request (or one batch) through the op's hooks, as a Conveyor step runs them."""
    request = RequestContext(id="peer")
    prepared = op.preprocess(inputs, request)
    outputs = prepared.outputs if isinstance(prepared, Skip) else op.process(prepared)
    return op.postprocess(outputs, request)


def answer_labels(labels: npt.NDArray[Any]) -> list[list[str]]:
    """A BYTES/str ``[N,k]`` labels tensor as lists of str: what the systems' answers are compared on."""
    rows = np.asarray(labels, dtype=object).reshape(len(labels), -1)
    return [[v.decode() if isinstance(v, bytes) else str(v) for v in row] for row in rows]
