"""What a caller of a step needs of it: a `Balancer` over the step's replicas, or a client of a step that runs in the
caller's own process (an embedded gateway's; see `conveyor_runtime.step.InProcessStepClient`)."""

from __future__ import annotations

from typing import Any, Protocol

from ..errors import StepCallError
from ..protocol import pb

__all__ = ["StepClient"]


class StepClient(Protocol):
    """Calls one step: ModelInfer and ModelMetadata, readiness, and the admission counts the gateway keeps."""

    step: str
    #: requests admitted by the gateway that will call this step but have not yet
    pending: int
    #: changes whenever the step's metadata may have changed (callers re-read what they derived from it)
    metadata_epoch: int

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def wait_ready(self, timeout: float | None = None) -> bool: ...

    def snapshot(self) -> list[dict[str, Any]]: ...

    def saturated(self) -> bool: ...

    def full_error(self) -> StepCallError: ...

    async def infer(self, request: pb.ModelInferRequest, deadline: float | None = None) -> pb.ModelInferResponse:
        """The step's answer; a failure as `StepCallError` (relayed: a later step's, through this one)."""
        ...

    async def metadata(self, timeout: float = 5.0) -> pb.ModelMetadataResponse | None: ...
