"""`grpc.health.v1` for one step, with Watch streams the step can end so that they never hold up a drain.

grpc_health's own servicer keeps every Watch open until the server cancels it, which made each SIGTERM drain
last the whole grace period (the gateway keeps one Watch per replica).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2

__all__ = ["StepHealth"]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class StepHealth:
    """Check and Watch for `services` (NOT_SERVING until `set`); `shut_down` is final, `end_watches` closes streams."""

    def __init__(self, services: Sequence[str]) -> None:
        self._status = dict.fromkeys(services, NOT_SERVING)
        self._changed = asyncio.Event()
        self._shut_down = False
        self._ending = False

    def status(self, service: str = "") -> int:
        return int(self._status.get(service, SERVICE_UNKNOWN))

    def set(self, service: str, status: int) -> None:
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

    async def List(self, request: object, context: grpc.aio.ServicerContext) -> object:
        """Every service's status (grpcio-health-checking 1.7x added this method; older ones never call it)."""
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
