"""The `inference.GRPCInferenceService` binding: method paths, server registration and a client stub.

Written by hand instead of generated so the service keeps its standard name while our messages live in
their own protobuf package (see open_inference.proto).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
import grpc.aio

from .proto import open_inference_pb2 as pb

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


def add_inference_servicer(server: grpc.aio.Server, servicer: InferenceServicer) -> None:
    """Register `servicer` on `server` under the standard service name."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=request_type.FromString,
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
