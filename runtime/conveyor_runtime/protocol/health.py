"""The `grpc.health.v1.Health` binding on our own messages: method paths, server registration and a client stub.

Written by hand, like the inference service's, so the service keeps its standard name while the messages come from
proto/health.proto: grpcio-health-checking's health_pb2 is generated for one protobuf major per release, and a
later install that moves protobuf (tritonclient[all] pins <7) leaves it unloadable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc
import grpc.aio

from .proto import health_pb2 as pb

__all__ = ["SERVICE_NAME", "HealthServicer", "HealthStub", "add_health_servicer"]

SERVICE_NAME = "grpc.health.v1.Health"


class HealthServicer(Protocol):
    """Check and List answer once; Watch streams a status whenever it changes (an async generator, or a coroutine
    that writes with `context.write`)."""

    async def Check(self, request: pb.HealthCheckRequest, context: grpc.aio.ServicerContext) -> pb.HealthCheckResponse: ...
    async def List(self, request: pb.HealthListRequest, context: grpc.aio.ServicerContext) -> pb.HealthListResponse: ...
    def Watch(
        self, request: pb.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.HealthCheckResponse] | Awaitable[None]: ...


def add_health_servicer(server: grpc.aio.Server, servicer: HealthServicer) -> None:
    """Register `servicer` on `server` as `grpc.health.v1.Health`."""
    check = pb.HealthCheckRequest.FromString
    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(
            servicer.Check, request_deserializer=check, response_serializer=pb.HealthCheckResponse.SerializeToString
        ),
        "List": grpc.unary_unary_rpc_method_handler(
            servicer.List,
            request_deserializer=pb.HealthListRequest.FromString,
            response_serializer=pb.HealthListResponse.SerializeToString,
        ),
        "Watch": grpc.unary_stream_rpc_method_handler(
            servicer.Watch, request_deserializer=check, response_serializer=pb.HealthCheckResponse.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


class HealthStub:
    """Client for `grpc.health.v1.Health` on a `grpc.aio` channel (awaitables, and a stream call for Watch) or on a
    blocking `grpc` channel (plain values and an iterator)."""

    def __init__(self, channel: grpc.aio.Channel | grpc.Channel) -> None:
        serialize_check = pb.HealthCheckRequest.SerializeToString
        self.Check = channel.unary_unary(
            f"/{SERVICE_NAME}/Check",
            request_serializer=serialize_check,
            response_deserializer=pb.HealthCheckResponse.FromString,
        )
        self.List = channel.unary_unary(
            f"/{SERVICE_NAME}/List",
            request_serializer=pb.HealthListRequest.SerializeToString,
            response_deserializer=pb.HealthListResponse.FromString,
        )
        self.Watch = channel.unary_stream(
            f"/{SERVICE_NAME}/Watch",
            request_serializer=serialize_check,
            response_deserializer=pb.HealthCheckResponse.FromString,
        )

    Check: Callable[..., Any]
    List: Callable[..., Any]
    Watch: Callable[..., Any]
