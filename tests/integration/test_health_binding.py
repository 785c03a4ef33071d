"""conveyor_runtime.protocol.health speaks `grpc.health.v1.Health` on the wire, with grpcio-health-checking as the peer.

The runtime carries its own health messages (generated for the whole protobuf range it declares); these tests
hold them to the reference implementation, in both directions, over real gRPC on loopback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
from grpc_health.v1 import health as reference_health
from grpc_health.v1 import health_pb2 as reference_pb2
from grpc_health.v1 import health_pb2_grpc as reference_grpc

from conveyor_runtime.protocol.health import SERVICE_NAME, HealthStub, add_health_servicer
from conveyor_runtime.protocol.proto import health_pb2 as pb

SERVING = pb.HealthCheckResponse.SERVING
NOT_SERVING = pb.HealthCheckResponse.NOT_SERVING


class _FixedHealth:
    """A servicer with fixed statuses: Check, List, and a Watch that sends the status once."""

    def __init__(self, statuses: dict[str, pb.HealthCheckResponse.ServingStatus]) -> None:
        self.statuses = statuses

    async def Check(self, request: pb.HealthCheckRequest, context: grpc.aio.ServicerContext) -> pb.HealthCheckResponse:
        if request.service not in self.statuses:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return pb.HealthCheckResponse(status=self.statuses[request.service])

    async def List(self, request: pb.HealthListRequest, context: grpc.aio.ServicerContext) -> pb.HealthListResponse:
        return pb.HealthListResponse(
            statuses={name: pb.HealthCheckResponse(status=status) for name, status in self.statuses.items()}
        )

    async def Watch(
        self, request: pb.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.HealthCheckResponse]:
        yield pb.HealthCheckResponse(status=self.statuses.get(request.service, pb.HealthCheckResponse.SERVICE_UNKNOWN))


async def _server(register: object) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    register(server)  # type: ignore[operator]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def test_health_binding_registers_the_standard_service_name() -> None:
    assert reference_pb2.DESCRIPTOR.services_by_name["Health"].full_name == SERVICE_NAME


def test_health_messages_load_beside_grpc_healths_own_and_share_its_wire_format() -> None:
    ours = pb.HealthListResponse(statuses={"a": pb.HealthCheckResponse(status=NOT_SERVING)})
    theirs = reference_pb2.HealthListResponse.FromString(ours.SerializeToString())
    assert theirs.statuses["a"].status == reference_pb2.HealthCheckResponse.NOT_SERVING
    back = pb.HealthCheckRequest.FromString(reference_pb2.HealthCheckRequest(service="step").SerializeToString())
    assert back.service == "step"


async def test_health_binding_answers_grpc_healths_client() -> None:
    servicer = _FixedHealth({"": SERVING, "classify": NOT_SERVING})
    server, address = await _server(lambda s: add_health_servicer(s, servicer))
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = reference_grpc.HealthStub(channel)
            check = await stub.Check(reference_pb2.HealthCheckRequest(service="classify"), timeout=10)
            assert check.status == reference_pb2.HealthCheckResponse.NOT_SERVING
            listed = await stub.List(reference_pb2.HealthListRequest(), timeout=10)
            assert {name: r.status for name, r in listed.statuses.items()} == {"": SERVING, "classify": NOT_SERVING}
            watched = [r.status async for r in stub.Watch(reference_pb2.HealthCheckRequest(service=""), timeout=10)]
            assert watched == [reference_pb2.HealthCheckResponse.SERVING]
    finally:
        await server.stop(None)


async def test_health_stub_reads_grpc_healths_servicer() -> None:
    reference = reference_health.aio.HealthServicer()
    await reference.set("", reference_pb2.HealthCheckResponse.SERVING)
    await reference.set("classify", reference_pb2.HealthCheckResponse.NOT_SERVING)
    server, address = await _server(lambda s: reference_grpc.add_HealthServicer_to_server(reference, s))
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = HealthStub(channel)
            check = await stub.Check(pb.HealthCheckRequest(service=""), timeout=10)
            assert check.status == SERVING
            call = stub.Watch(pb.HealthCheckRequest(service="classify"), timeout=10)
            first = await call.read()
            assert first.status == NOT_SERVING
            call.cancel()
    finally:
        await server.stop(None)
