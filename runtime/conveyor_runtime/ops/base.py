"""The Op API: what a step runs. An op declares its tensors and implements per-request and per-batch hooks.

Hooks may be plain or ``async def``; plain hooks run on a worker thread, never on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..arrays import Arrays

__all__ = ["Arrays", "Op", "OpContext", "RequestContext", "Skip", "TensorSpec"]


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, Open Inference Protocol datatype and shape (-1 = any size, batch dim first).

    ``shape=None`` accepts any rank (the op checks it); ``also`` lists further datatypes an input accepts.
    """

    name: str
    datatype: str
    shape: tuple[int, ...] | None
    also: tuple[str, ...] = ()

    @property
    def datatypes(self) -> tuple[str, ...]:
        return (self.datatype, *self.also)

    @property
    def reported_shape(self) -> list[int]:
        """The shape for ModelMetadata (any rank is reported as ``[-1]``)."""
        return list(self.shape) if self.shape is not None else [-1]


@dataclass(frozen=True)
class OpContext:
    """What `Op.init` gets besides its config: the step's name and the directory relative paths resolve against."""

    step: str
    base_dir: Path

    def resolve(self, path: str | Path) -> Path:
        """`path` made absolute against the manifest's directory."""
        candidate = Path(path)
        return candidate if candidate.is_absolute() else self.base_dir / candidate


@dataclass
class RequestContext:
    """One request as the per-request hooks see it; ``state`` carries anything from preprocess to postprocess."""

    id: str
    parameters: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Skip:
    """Returned by `Op.preprocess` to answer a request without `process`; these outputs go to `postprocess`."""

    outputs: Arrays


class Op:
    """Base class of every op; override the hooks you need (the defaults pass tensors through).

    * ``init(config, context)`` once, before the step reports ready;
    * ``preprocess(inputs, request)`` per request, may return `Skip(outputs)`;
    * ``process(batch)`` per batch: rows along axis 0, must return as many rows as it got;
    * ``postprocess(outputs, request)`` per request.

    Any hook may raise `conveyor_runtime.OpError(message, status=..., reason=...)` to fail a request
    (in `process`: every request of the batch) with a status and reason that reach the client.
    """

    #: Tensors the step accepts and returns (also what ModelMetadata reports).
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    #: False: `process` sees one request at a time (never merged with others).
    batched: ClassVar[bool] = True
    #: True: a request with a single tensor is accepted whatever its name (the op has one input).
    any_input_name: ClassVar[bool] = False
    #: ModelMetadata's `platform`.
    platform: ClassVar[str] = "conveyor_op"

    def init(self, config: dict[str, Any], context: OpContext) -> None:
        """Read settings and load resources; raise `ValueError` with the bad key for a bad config."""

    def preprocess(self, inputs: Arrays, request: RequestContext) -> Arrays | Skip:
        return inputs

    def process(self, batch: Arrays) -> Arrays:
        return batch

    def postprocess(self, outputs: Arrays, request: RequestContext) -> Arrays:
        return outputs

    def warm_up(self, batch_sizes: list[int]) -> None:
        """Run once per size before the step reports ready (models override this)."""

    def close(self) -> None:
        """Release resources when the step stops."""

    @property
    def provider(self) -> str:
        """Where `process` runs, for the SERVING log line."""
        return "python"

