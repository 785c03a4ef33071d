"""The step's `inference.GRPCInferenceService`: converts and delegates to `Step`, maps errors at one seam."""

from __future__ import annotations

import logging
import time

import grpc
import grpc.aio

from . import __version__
from .errors import InvalidRequest, RequestError
from .protocol import abort_with
from .proto import open_inference_pb2 as pb
from .step import Step

__all__ = ["StepServicer", "SERVER_NAME"]

log = logging.getLogger(__name__)

SERVER_NAME = "conveyor-step"


class StepServicer:
    """Open Inference Protocol for one step; the model name is the step's name (an empty name also works)."""

    def __init__(self, step: Step, *, max_message_bytes: int) -> None:
        self.step = step
        self.ready = False
        self.max_message_bytes = max_message_bytes

    def _known(self, name: str) -> bool:
        return name in ("", self.step.name)

    async def _not_found(self, context: grpc.aio.ServicerContext, name: str) -> None:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {name!r}; this step serves {self.step.name!r}")

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        if not self._known(request.name):
            await self._not_found(context, request.name)
        return pb.ModelReadyResponse(ready=self.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=[])

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        if not self._known(request.name):
            await self._not_found(context, request.name)
        response = pb.ModelMetadataResponse(name=self.step.name, versions=["1"], platform=self.step.op.platform)
        for spec in self.step.inputs:
            response.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.reported_shape)
        for spec in self.step.outputs:
            response.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.reported_shape)
        return response

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        started = time.monotonic()
        if not self._known(request.model_name):
            self.step.metrics.request_done("NOT_FOUND", time.monotonic() - started)
            await self._not_found(context, request.model_name)
        remaining = context.time_remaining()
        deadline = started + remaining if remaining is not None else None
        error: BaseException
        try:
            size = request.ByteSize()
            if size > self.max_message_bytes:
                raise _too_large(request, size, self.max_message_bytes)
            response = await self.step.infer(request, deadline=deadline)
        except RequestError as exc:
            error = exc
        except Exception as exc:
            log.exception("step %s: request %r failed", self.step.name, request.id)
            error = exc
        else:
            self.step.metrics.request_done("OK", time.monotonic() - started)
            return response
        self.step.metrics.request_done(error.status if isinstance(error, RequestError) else "INTERNAL", time.monotonic() - started)
        await abort_with(context, error)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover


def _too_large(request: pb.ModelInferRequest, size: int, limit: int) -> RequestError:
    sizes = {t.name: len(raw) for t, raw in zip(request.inputs, request.raw_input_contents)}
    largest = max(sizes, key=lambda n: sizes[n]) if sizes else (request.inputs[0].name if request.inputs else "?")
    return InvalidRequest(
        f"input {largest!r}: the request is {size} bytes, over this step's limit of {limit}; send fewer rows per request"
    )
