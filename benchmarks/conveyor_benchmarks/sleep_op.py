"""An op whose capacity is known and costs no CPU: it sleeps a fixed time per batch and echoes its input.

Used where a step's capacity must be exact, e.g. the autoscaling test on real pods
(`op: conveyor_benchmarks.sleep_op:FixedSleep`, config `seconds`): one replica computes
maxBatchSize / seconds rows per second per model instance, whatever the machine.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from conveyor_runtime.ops import Arrays, Op, OpContext, TensorSpec

__all__ = ["FixedSleep"]


class FixedSleep(Op):
    """Sleeps `seconds` (config, default 0.05) per batch, then returns its one input (any name) as ``y``."""

    any_input_name: ClassVar[bool] = True

    def init(self, config: dict[str, Any], context: OpContext) -> None:
        unknown = sorted(set(config) - {"seconds", "input"})
        if unknown:
            raise ValueError(f"config: unknown key(s) {unknown}; known: ['input', 'seconds']")
        self.seconds = float(config.get("seconds", 0.05))
        if not 0 < self.seconds <= 10:
            raise ValueError(f"config.seconds: must be within (0, 10], got {self.seconds}")
        self.inputs = [TensorSpec(str(config.get("input", "x")), "FP32", (-1, -1))]
        self.outputs = [TensorSpec("y", "FP32", (-1, -1))]

    def process(self, batch: Arrays) -> Arrays:
        time.sleep(self.seconds)
        (x,) = batch.values()
        return {"y": x}
