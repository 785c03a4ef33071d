"""An ONNX model as an op: `process` is one ONNX Runtime call on a free model instance."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from ..arrays import Arrays
from ..ops import Op
from ..spec import BatchingSpec, ModelSpec
from .cpus import CpuBudget
from .gpu_options import BatchRange, parse_bytes
from .session import ModelSession

__all__ = ["ModelOp"]


class ModelOp(Op):
    """Serves one ONNX file; inputs and outputs come from the model, batching is checked against it."""

    platform: ClassVar[str] = "onnxruntime_onnx"

    def __init__(
        self,
        path: Path,
        model: ModelSpec,
        batching: BatchingSpec,
        *,
        cpus: CpuBudget | None = None,
        gpus: int = 0,
        gpu_memory: str | None = None,
        spin: bool = False,
    ) -> None:
        """`gpus`, `gpu_memory`: the step's ``resources.gpu`` and ``resources.gpuMemory``; `spin`: see `ModelSession`."""
        self.session = ModelSession(
            path,
            model,
            cpus=cpus,
            gpus=gpus,
            batch=BatchRange.for_batching(batching.maxBatchSize, batching.preferredBatchSizes),
            gpu_memory=None if gpu_memory is None else parse_bytes(gpu_memory),
            spin=spin,
        )
        self.session.check_batching(batching.maxBatchSize)
        self.inputs = list(self.session.inputs)
        self.outputs = list(self.session.outputs)
        self.instances = model.instances

    def process(self, batch: Arrays) -> Arrays:
        return self.session.run(batch)

    def process_alone(self, batch: Arrays) -> Arrays:
        """`process` for a batch that computes with nothing beside it: on all the step's CPU threads."""
        return self.session.run_alone(batch)

    @property
    def alone_threads(self) -> int | None:
        """Intra-op threads of a batch computed alone, when more than an instance's (``model.adaptiveThreads``)."""
        return self.session.wide_threads

    def warm_up(self, batch_sizes: list[int]) -> None:
        fixed = self.session.fixed_batch
        self.session.warm_up([fixed] if fixed else batch_sizes)

    @property
    def provider(self) -> str:
        return self.session.provider
