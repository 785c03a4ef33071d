"""The step's `inference.GRPCInferenceService`: converts and delegates to its `OpLoop`s, maps errors at one seam, and
carries its outputs on to the next step of the request's route when it can (see `protocol.route`): in memory to a
step running in this process, forwarded to one elsewhere."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import grpc.aio

from ..arrays import Arrays, shared_rows
from ..errors import InvalidRequest, RequestError, StepCallError
from ..ops import TensorSpec
from ..protocol import (
    FAILED_STEP_METADATA,
    ModelServicerBase,
    TensorInfo,
    encode_tensors,
    fail_with,
    mark_answer,
    pb,
    route_of,
)
from ..spec import route_inputs
from .forwarder import Forwarder
from .op_loop import OpLoop

__all__ = ["SERVER_NAME", "StepServicer"]

log = logging.getLogger(__name__)

SERVER_NAME = "conveyor-step"


class StepServicer(ModelServicerBase):
    """Open Inference Protocol for a step and the steps that run in its process (`inProcessWith` it).

    Each is a model named after its step (an empty name means the first, the process's own step). Where a request's
    route goes on to a step in this process, its tensors are handed over in memory; the rest of the route is
    forwarded (`Forwarder`), and a later step's failure is relayed marked as that step's.
    """

    server_name = SERVER_NAME

    def __init__(self, op_loops: Sequence[OpLoop], *, max_message_bytes: int, forwarder: Forwarder | None = None) -> None:
        self.op_loops = {loop.name: loop for loop in op_loops}
        self.own = op_loops[0]
        self.forwarder = forwarder
        self.ready = False
        self.max_message_bytes = max_message_bytes

    @property
    def model_name(self) -> str:
        return self.own.name

    @property
    def model_names(self) -> Sequence[str]:
        return tuple(self.op_loops)

    @property
    def platform(self) -> str:
        return self.own.op.platform

    def platform_of(self, model: str) -> str:
        return self.op_loops[model].op.platform

    @property
    def is_ready(self) -> bool:
        return self.ready

    async def tensor_metadata(self, model: str) -> tuple[Sequence[TensorInfo], Sequence[TensorInfo]]:
        def infos(specs: Sequence[TensorSpec]) -> list[TensorInfo]:
            return [TensorInfo(s.name, s.datatype, tuple(s.reported_shape)) for s in specs]

        loop = self.op_loops[model]
        return infos(loop.inputs), infos(loop.outputs)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        try:
            return await self.respond(request, deadline)
        except StepCallError as exc:
            if exc.relayed:  # a later step failed: relayed as that step's
                context.set_trailing_metadata(((FAILED_STEP_METADATA, exc.step),))
            error: BaseException = exc
        except Exception as exc:
            error = exc
        error.__traceback__ = None  # see fail_with: no frame that holds the request is kept
        fail_with(context, error)  # not abort: see fail_with
        return pb.ModelInferResponse()

    async def respond(self, request: pb.ModelInferRequest, deadline: float | None) -> pb.ModelInferResponse:
        """The answer to one ModelInfer request (`deadline`: a time.monotonic() instant, or None), carried on along its
        route. A failure of this process's step is raised as it is (logged first when unexpected); a later step's as a
        `StepCallError` marked `relayed`."""
        started = time.monotonic()
        loop = self.op_loops.get(request.model_name or self.own.name, self.own)
        loop.metrics.request_received(_rows(request))
        try:
            loop = self.op_loops[self.check_model(request.model_name, request.model_version)]
            size = request.ByteSize()
            if size > self.max_message_bytes:
                raise _too_large(request, size, self.max_message_bytes)
            route = route_of(request)
            outputs = await loop.infer_arrays(request, deadline=deadline)
        except RequestError as exc:
            loop.metrics.request_done(exc.status, time.monotonic() - started)
            raise
        except Exception:
            log.exception("step %s: request %r failed", loop.name, request.id)
            loop.metrics.request_done("INTERNAL", time.monotonic() - started)
            raise
        loop.metrics.request_done("OK", time.monotonic() - started)
        try:
            return await self._answer(loop.name, outputs, route, request.id, deadline)
        except StepCallError as exc:
            raise StepCallError(exc.step, exc.status, exc.message, relayed=True) from None

    async def _answer(
        self, step: str, outputs: Arrays, route: list[str], request_id: str, deadline: float | None
    ) -> pb.ModelInferResponse:
        """`step`'s outputs, carried on along `route`: in memory through the steps in this process, then forwarded
        to the next step elsewhere when it can be reached; the answer is the last step's outputs, marked as its."""
        while route and route[0] in self.op_loops:
            target = self.op_loops[route[0]]
            tensors = route_inputs(target.name, [(step, outputs)], [spec.name for spec in target.inputs])
            outputs = await self._in_process(target, tensors, request_id, deadline)
            step, route = target.name, route[1:]
        response = pb.ModelInferResponse(model_name=step, id=request_id)
        encode_tensors(response, outputs.items())
        if not route or self.forwarder is None or not await self.forwarder.can_reach(route[0]):
            mark_answer(response, step)
            return response
        return await self.forwarder.forward(response, route, request_id, deadline, sender=step)

    async def _in_process(self, loop: OpLoop, inputs: Arrays, request_id: str, deadline: float | None) -> Arrays:
        """One step of the route run in this process, counted in its own metrics; its failure is a `StepCallError`."""
        started = time.monotonic()
        loop.metrics.request_received(shared_rows(inputs) or 1)
        try:
            outputs = await loop.run(inputs, request_id=request_id, deadline=deadline)
        except RequestError as exc:
            loop.metrics.request_done(exc.status, time.monotonic() - started)
            raise StepCallError(loop.name, exc.status, exc.message) from None
        except Exception:
            log.exception("step %s: request %r failed", loop.name, request_id)
            loop.metrics.request_done("INTERNAL", time.monotonic() - started)
            raise StepCallError(loop.name, "INTERNAL", "the step failed; see its log") from None
        loop.metrics.request_done("OK", time.monotonic() - started)
        return outputs


def _too_large(request: pb.ModelInferRequest, size: int, limit: int) -> RequestError:
    sizes = {t.name: len(raw) for t, raw in zip(request.inputs, request.raw_input_contents)}
    largest = max(sizes, key=lambda n: sizes[n]) if sizes else (request.inputs[0].name if request.inputs else "?")
    return InvalidRequest(
        f"input {largest!r}: the request is {size} bytes, over this step's limit of {limit}; send fewer rows per request"
    )


def _rows(request: pb.ModelInferRequest) -> int:
    """The request's rows as its first input declares them (its batch dimension; 1 for a scalar or no input)."""
    if request.inputs and request.inputs[0].shape:
        return max(1, int(request.inputs[0].shape[0]))
    return 1
