"""The step's `inference.GRPCInferenceService`: converts and delegates to its `OpLoop`, maps errors at one seam, and
forwards its outputs to the next step of the request's route when it can (see `protocol.route`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import grpc.aio

from ..errors import InvalidRequest, RequestError, StepCallError
from ..ops import TensorSpec
from ..protocol import FAILED_STEP_METADATA, ModelServicerBase, TensorInfo, fail_with, mark_answer, pb, route_of
from .forwarder import Forwarder
from .op_loop import OpLoop

__all__ = ["SERVER_NAME", "StepServicer"]

log = logging.getLogger(__name__)

SERVER_NAME = "conveyor-step"


class StepServicer(ModelServicerBase):
    """Open Inference Protocol for one step; the model name is the step's name (an empty name also works)."""

    server_name = SERVER_NAME

    def __init__(self, op_loop: OpLoop, *, max_message_bytes: int, forwarder: Forwarder | None = None) -> None:
        self.op_loop = op_loop
        self.forwarder = forwarder
        self.ready = False
        self.max_message_bytes = max_message_bytes

    @property
    def model_name(self) -> str:
        return self.op_loop.name

    @property
    def platform(self) -> str:
        return self.op_loop.op.platform

    @property
    def is_ready(self) -> bool:
        return self.ready

    async def tensor_metadata(self) -> tuple[Sequence[TensorInfo], Sequence[TensorInfo]]:
        def infos(specs: Sequence[TensorSpec]) -> list[TensorInfo]:
            return [TensorInfo(s.name, s.datatype, tuple(s.reported_shape)) for s in specs]

        return infos(self.op_loop.inputs), infos(self.op_loop.outputs)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        started = time.monotonic()
        remaining = context.time_remaining()
        deadline = started + remaining if remaining is not None else None
        self.op_loop.metrics.request_received(_rows(request))
        error: BaseException
        try:
            self.check_model(request.model_name, request.model_version)
            size = request.ByteSize()
            if size > self.max_message_bytes:
                raise _too_large(request, size, self.max_message_bytes)
            route = route_of(request)
            response = await self.op_loop.infer(request, deadline=deadline)
        except RequestError as exc:
            error = exc
        except Exception as exc:
            log.exception("step %s: request %r failed", self.op_loop.name, request.id)
            error = exc
        else:
            self.op_loop.metrics.request_done("OK", time.monotonic() - started)
            return await self._answer(response, route, request.id, deadline, context)
        status = error.status if isinstance(error, RequestError) else "INTERNAL"
        self.op_loop.metrics.request_done(status, time.monotonic() - started)
        fail_with(context, error)  # not abort: see fail_with
        return pb.ModelInferResponse()

    async def _answer(
        self,
        response: pb.ModelInferResponse,
        route: list[str],
        request_id: str,
        deadline: float | None,
        context: grpc.aio.ServicerContext,
    ) -> pb.ModelInferResponse:
        """This step's outputs, or (forwarded along `route`) the route's answer; a later step's failure is relayed
        with its status and words, marked as that step's."""
        if not route or self.forwarder is None or not await self.forwarder.can_reach(route[0]):
            mark_answer(response, self.op_loop.name)
            return response
        try:
            return await self.forwarder.forward(response, route, request_id, deadline)
        except StepCallError as exc:
            context.set_trailing_metadata(((FAILED_STEP_METADATA, exc.step),))
            fail_with(context, exc)
            return pb.ModelInferResponse()


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
