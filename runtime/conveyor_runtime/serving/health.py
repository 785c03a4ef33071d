"""`grpc.health.v1` for a step or the gateway, with Watch streams the server can end so that they never hold up a drain.

grpc_health's own servicer keeps every Watch open until the server cancels it, which made each SIGTERM drain
last the whole grace period (the gateway keeps one Watch per replica). The messages are our own
(`protocol.health`), so a later install that moves protobuf cannot break them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import grpc.aio

from ..protocol.health import add_health_servicer
from ..protocol.proto import health_pb2

__all__ = ["NOT_SERVING", "SERVING", "HealthService"]

Status = health_pb2.HealthCheckResponse.ServingStatus

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthService:
    """Check and Watch for `services` (NOT_SERVING until `set`); `shut_down` is final, `end_watches` closes streams."""

    def __init__(self, services: Sequence[str]) -> None:
        self._status = dict.fromkeys(services, NOT_SERVING)
        self._changed = asyncio.Event()
        self._shut_down = False
        self._ending = False

    def add_to(self, server: grpc.aio.Server) -> None:
        """Serve Check, List and Watch on `server`."""
        add_health_servicer(server, self)

    def status(self, service: str = "") -> Status:
        return self._status.get(service, SERVICE_UNKNOWN)

    def set(self, service: str, status: Status) -> None:
        """Set one service's status (ignored after `shut_down`)."""
        if not self._shut_down:
            self._status[service] = status
            self._notify()

    def shut_down(self) -> None:
        """Every service NOT_SERVING for good (the first step of a graceful stop)."""
        self._shut_down = True
        for service in self._status:
            self._status[service] = NOT_SERVING
        self._notify()

    def end_watches(self) -> None:
        """End every Watch stream with OK after it has sent the current status; later Watch calls end at once."""
        self._ending = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext) -> health_pb2.HealthListResponse:
        """Every service's status."""
        statuses = {name: health_pb2.HealthCheckResponse(status=status) for name, status in self._status.items()}
        return health_pb2.HealthListResponse(statuses=statuses)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        last = None
        while True:
            changed = self._changed  # taken before reading, so a change during the write below is not missed
            status = self.status(request.service)
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if self._ending:
                return
            await changed.wait()
