"""`conveyor_custom_ops:Affine`: y = x * scale + shift, row by row (batched like any op)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from conveyor_runtime.ops import Arrays, Op, OpContext, TensorSpec


class Affine(Op):
    """Scales and shifts the step's single FP32 tensor (any name, any shape with rows first); output `y`.

    Config keys: scale (default 1.0), shift (default 0.0).
    """

    any_input_name: ClassVar[bool] = True
    inputs = [TensorSpec("x", "FP32", None)]
    outputs = [TensorSpec("y", "FP32", None)]

    def init(self, config: dict[str, Any], context: OpContext) -> None:
        unknown = sorted(set(config) - {"scale", "shift"})
        if unknown:
            raise ValueError(f"config: unknown key(s) {unknown}; known: ['scale', 'shift']")
        self.scale = np.float32(config.get("scale", 1.0))
        self.shift = np.float32(config.get("shift", 0.0))

    def process(self, batch: Arrays) -> Arrays:
        (x,) = batch.values()
        return {"y": (x.astype(np.float32) * self.scale + self.shift).astype(np.float32)}
