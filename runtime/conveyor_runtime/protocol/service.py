"""The `inference.GRPCInferenceService` binding: method paths, server registration and a client stub.

Written by hand instead of generated so the service keeps its standard name while our messages live in
their own protobuf package (see open_inference.proto).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from ..errors import InvalidRequest
from .proto import open_inference_pb2 as pb
from .status import abort_with

__all__ = [
    "METHODS",
    "SERVICE_NAME",
    "InferenceServicer",
    "InferenceStub",
    "add_inference_servicer",
]

SERVICE_NAME = "inference.GRPCInferenceService"

#: method name -> (request type, response type)
METHODS: dict[str, tuple[Any, Any]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}


class InferenceServicer(Protocol):
    """What a step server or the gateway implements: one async method per RPC."""

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse: ...
    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse: ...
    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse: ...
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse: ...
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse: ...
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse: ...


class _Unparsable:
    """Stands in for a request whose bytes are not a valid message, so the handler can answer INVALID_ARGUMENT.

    grpc would otherwise answer UNKNOWN with the protobuf exception's internal type name.
    """

    def __init__(self, method: str, reason: str) -> None:
        self.method = method
        self.reason = reason


def _parser(method: str, request_type: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return request_type.FromString(data)
        except DecodeError as exc:
            return _Unparsable(method, str(exc))

    return parse


def _guarded(method: str, handler: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]) -> Any:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Unparsable):
            detail = request.reason.rpartition(": ")[2] or "it does not parse"
            message = f"the {method} request is not a valid protobuf message ({detail}); send an inference.{method}Request"
            await abort_with(context, InvalidRequest(message))
        return await handler(request, context)

    return call


def add_inference_servicer(server: grpc.aio.Server, servicer: InferenceServicer) -> None:
    """Register `servicer` on `server` under the standard service name; unparsable messages get INVALID_ARGUMENT."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _guarded(name, getattr(servicer, name)),
            request_deserializer=_parser(name, request_type),
            response_serializer=response_type.SerializeToString,
        )
        for name, (request_type, response_type) in METHODS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


class InferenceStub:
    """Async client for `inference.GRPCInferenceService` (what the gateway uses to call steps)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        for name, (request_type, response_type) in METHODS.items():
            setattr(
                self,
                name,
                channel.unary_unary(
                    f"/{SERVICE_NAME}/{name}",
                    request_serializer=request_type.SerializeToString,
                    response_deserializer=response_type.FromString,
                ),
            )

    ServerLive: Callable[..., Awaitable[pb.ServerLiveResponse]]
    ServerReady: Callable[..., Awaitable[pb.ServerReadyResponse]]
    ModelReady: Callable[..., Awaitable[pb.ModelReadyResponse]]
    ServerMetadata: Callable[..., Awaitable[pb.ServerMetadataResponse]]
    ModelMetadata: Callable[..., Awaitable[pb.ModelMetadataResponse]]
    ModelInfer: Callable[..., Awaitable[pb.ModelInferResponse]]
