"""Ops for the batching-settings checks (referenced as `tests.support.unbatched_ops:Name`)."""

from __future__ import annotations

from typing import ClassVar

from conveyor_runtime.ops import Arrays, Op, RequestContext, TensorSpec

__all__ = ["OneAtATimeOp", "PerRequestOnlyOp"]


class OneAtATimeOp(Op):
    """Has a `process` but declares ``batched = False``: each request is computed alone."""

    inputs = [TensorSpec("x", "FP32", (-1, 2))]
    outputs = [TensorSpec("x", "FP32", (-1, 2))]
    batched: ClassVar[bool] = False

    def process(self, batch: Arrays) -> Arrays:
        return batch


class PerRequestOnlyOp(Op):
    """Only per-request hooks: no batch step at all."""

    inputs = [TensorSpec("x", "FP32", (-1, 2))]
    outputs = [TensorSpec("x", "FP32", (-1, 2))]

    def preprocess(self, inputs: Arrays, request: RequestContext) -> Arrays:
        return inputs
