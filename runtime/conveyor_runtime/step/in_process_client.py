"""A step that runs in the caller's own process, called in memory: what a gateway embedded in a step's process
(`conveyor run --gateway embedded`) uses instead of a `Balancer` for the steps served there.

The request skips the gRPC hop (a serialization and a parse each way, and a wake-up of another process) but is
otherwise answered as over the wire (`StepServicer.respond`): the same checks, route, forwarding, metrics and errors.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..errors import StepCallError
from ..protocol import client_message, grpc_code, pb
from ..routing import DEFAULT_TIMEOUT_S
from .servicer import StepServicer

__all__ = ["InProcessStepClient"]

#: How often `wait_ready` looks at the servicer (it turns ready once, at the end of the server's start).
_READY_POLL_S = 0.05


class InProcessStepClient:
    """Calls `step`, served by `servicer` in this process; a `routing.StepClient`."""

    def __init__(self, servicer: StepServicer, step: str, *, default_timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if step not in servicer.model_names:
            raise ValueError(f"step {step!r} is not served in this process (it serves {', '.join(servicer.model_names)})")
        self.step = step
        self.pending = 0
        self.metadata_epoch = 0  # one process, one op: its metadata never changes
        self._servicer = servicer
        self._default_timeout_s = default_timeout_s
        self._outstanding = 0
        self._served = 0

    @property
    def ready(self) -> bool:
        return self._servicer.is_ready

    async def start(self) -> None:
        """Nothing to connect to."""

    async def aclose(self) -> None:
        """Nothing to close: the step's server stops itself, after the gateway."""

    async def wait_ready(self, timeout: float | None = None) -> bool:
        until = None if timeout is None else time.monotonic() + timeout
        while not self.ready:
            if until is not None and time.monotonic() >= until:
                return False
            await asyncio.sleep(_READY_POLL_S)
        return True

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "address": "in-process",
                "healthy": self.ready,
                "ejected": False,
                "outstanding": self._outstanding,
                "served": self._served,
            }
        ]

    def saturated(self) -> bool:
        """Never known in advance: a full queue refuses the call at once, in memory, with nothing to save."""
        return False

    def full_error(self) -> StepCallError:
        return StepCallError(self.step, "RESOURCE_EXHAUSTED", "the step's queue is full; retry later or add replicas")

    async def infer(self, request: pb.ModelInferRequest, deadline: float | None = None) -> pb.ModelInferResponse:
        """The step's answer within `deadline` (None: the default timeout); a failure as `StepCallError`, the step's
        own named after it, a later step's as relayed through it."""
        if deadline is None:
            deadline = time.monotonic() + self._default_timeout_s
        if not self.ready:
            raise StepCallError(self.step, "UNAVAILABLE", "the step in this process is not serving (stopping or failed)")
        self._outstanding += 1
        try:
            # the loop's clock is time.monotonic(), the clock of every deadline here
            async with asyncio.timeout_at(deadline):
                response = await self._servicer.respond(request, deadline)
        except StepCallError as exc:
            if exc.relayed:
                raise
            raise StepCallError(self.step, exc.status, exc.message) from None
        except TimeoutError:
            raise StepCallError(self.step, "DEADLINE_EXCEEDED", "the request's deadline passed") from None
        except Exception as exc:  # logged by the servicer when unexpected; the client gets what a remote caller would
            raise StepCallError(self.step, grpc_code(exc).name, client_message(exc)) from None
        finally:
            self._outstanding -= 1
        self._served += 1
        return response

    async def metadata(self, timeout: float = 5.0) -> pb.ModelMetadataResponse | None:
        return await self._servicer.metadata_of(self.step)
