"""Client-side balancing over a step's replicas: least outstanding requests, health-watched, retry on UNAVAILABLE.

Each replica gets its own channel (so HTTP/2 connections are never pinned to one pod) and a task that watches
its grpc.health.v1 status. A call that fails with UNAVAILABLE goes to another replica while the deadline allows.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..errors import DeadlineExceeded, ModelNotReady, StepCallError
from ..protocol import InferenceStub, error_from_rpc, pb
from ..serving import TaskSet
from .endpoints import EndpointSource, watch_endpoints

__all__ = ["CHANNEL_OPTIONS", "Balancer", "Replica"]

log = logging.getLogger(__name__)

#: Large tensors travel between steps; reconnect fast so a restarted replica is used again within a second or two.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
]
#: How long a request without a deadline waits for a replica of a step to become ready.
DEFAULT_WAIT_S = 30.0


@dataclass(eq=False)
class Replica:
    """One replica of a step: its channel, health and the number of calls it is working on."""

    address: str
    channel: grpc.aio.Channel
    stub: InferenceStub
    outstanding: int = 0
    healthy: bool = False
    served: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Balancer:
    """Spreads one step's calls over its replicas; `ready` once any replica reports SERVING."""

    def __init__(
        self,
        step: str,
        source: EndpointSource,
        *,
        on_ready_change: Callable[[], None] | None = None,
        retry_backoff_s: float = 0.5,
        wait_s: float = DEFAULT_WAIT_S,
    ) -> None:
        self.step = step
        self.source = source
        self.replicas: dict[str, Replica] = {}
        self._on_ready_change = on_ready_change
        self._retry_backoff_s = retry_backoff_s
        self._wait_s = wait_s
        self._ready = asyncio.Event()
        self._changed = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._tasks = TaskSet(f"balancer of step {step}")
        self._metadata: pb.ModelMetadataResponse | None = None
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Resolve the endpoints once (static sources are final) and keep watching dynamic ones."""
        if self.source.refresh_s is None:
            await watch_endpoints(self.source, self._set_addresses)
        else:
            self._watcher = self._tasks.spawn(watch_endpoints(self.source, self._set_addresses), name="watch-endpoints")

    async def aclose(self) -> None:
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        await self._set_addresses([])
        await self._tasks.aclose()

    async def _set_addresses(self, addresses: list[str]) -> None:
        wanted = set(addresses)
        for address in [a for a in self.replicas if a not in wanted]:
            replica = self.replicas.pop(address)
            if replica.task is not None:
                replica.task.cancel()
            await replica.channel.close(grace=None)
        for address in addresses:
            if address not in self.replicas:
                channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
                replica = Replica(address=address, channel=channel, stub=InferenceStub(channel))
                self.replicas[address] = replica
                replica.task = self._tasks.spawn(self._watch_health(replica), name=f"health-{address}")
        self._update_ready()

    async def _watch_health(self, replica: Replica) -> None:
        """Follow the replica's health stream; reconnect after failures (a restarted replica comes back)."""
        stub = health_pb2_grpc.HealthStub(replica.channel)
        while True:
            try:
                call = stub.Watch(health_pb2.HealthCheckRequest(service=""))
                async for response in call:
                    self._set_health(replica, response.status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # no Watch: poll Check instead
                    await self._poll_health(replica, stub)
                    return
            self._set_health(replica, False)
            await asyncio.sleep(self._retry_backoff_s)

    async def _poll_health(self, replica: Replica, stub: health_pb2_grpc.HealthStub) -> None:
        while True:
            try:
                response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5.0)
                self._set_health(replica, response.status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.aio.AioRpcError:
                self._set_health(replica, False)
            await asyncio.sleep(self._retry_backoff_s)

    def _set_health(self, replica: Replica, healthy: bool) -> None:
        if replica.healthy != healthy:
            log.info("step %s replica %s is %s", self.step, replica.address, "ready" if healthy else "not ready")
            replica.healthy = healthy
            self._update_ready()

    def _update_ready(self) -> None:
        ready = any(r.healthy for r in self.replicas.values())
        if ready != self._ready.is_set():
            if ready:
                self._ready.set()
            else:
                self._ready.clear()
            if self._on_ready_change is not None:
                self._on_ready_change()
        self._changed.set()
        self._changed = asyncio.Event()

    # --- state -----------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def snapshot(self) -> list[dict[str, Any]]:
        """Per replica: address, health, outstanding and served calls (for status pages and tests)."""
        return [
            {"address": r.address, "healthy": r.healthy, "outstanding": r.outstanding, "served": r.served}
            for r in self.replicas.values()
        ]

    # --- calls -----------------------------------------------------------------------------------------------

    def _pick(self, tried: set[str]) -> Replica | None:
        """The healthy, untried replica with the fewest outstanding calls (random among equals)."""
        best: list[Replica] = []
        least = None
        for replica in self.replicas.values():
            if not replica.healthy or replica.address in tried:
                continue
            if least is None or replica.outstanding < least:
                best, least = [replica], replica.outstanding
            elif replica.outstanding == least:
                best.append(replica)
        if not best:
            return None
        return best[0] if len(best) == 1 else random.choice(best)

    async def _wait_for_change(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining > 0:
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, self._retry_backoff_s))
            except asyncio.TimeoutError:
                pass

    async def infer(self, request: pb.ModelInferRequest, deadline: float | None = None) -> pb.ModelInferResponse:
        """Call ModelInfer on the best replica, passing the remaining deadline; retry elsewhere on UNAVAILABLE."""
        wait_until = deadline if deadline is not None else time.monotonic() + self._wait_s
        tried: set[str] = set()
        last_error: grpc.aio.AioRpcError | None = None
        while True:
            if self._closed:
                raise ModelNotReady(f"step {self.step!r}: the gateway is shutting down; retry on another gateway")
            replica = self._pick(tried)
            if replica is None:
                tried.clear()  # every ready replica failed once: wait a moment, then try them again
                if time.monotonic() >= wait_until:
                    break
                await self._wait_for_change(wait_until)
                continue
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                break
            replica.outstanding += 1
            try:
                response: pb.ModelInferResponse = await replica.stub.ModelInfer(request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise error_from_rpc(exc, step=self.step) from None
                log.debug("step %s replica %s unavailable (%s); retrying elsewhere", self.step, replica.address, exc.details())
                last_error = exc
                tried.add(replica.address)
                continue
            finally:
                replica.outstanding -= 1
            replica.served += 1
            return response
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded(f"step {self.step!r}: the request's deadline passed while waiting for a ready replica")
        if last_error is not None:
            raise StepCallError(self.step, "UNAVAILABLE", last_error.details() or "unavailable")
        raise ModelNotReady(
            f"step {self.step!r}: no ready replica among {self.source.describe()}; check that the step is running"
        )

    async def metadata(self, timeout: float = 5.0) -> pb.ModelMetadataResponse | None:
        """The step's ModelMetadata from a ready replica (cached once fetched); None if none answers."""
        if self._metadata is not None:
            return self._metadata
        for replica in [r for r in self.replicas.values() if r.healthy]:
            try:
                self._metadata = await replica.stub.ModelMetadata(pb.ModelMetadataRequest(name=""), timeout=timeout)
                return self._metadata
            except grpc.aio.AioRpcError as exc:
                log.warning("step %s replica %s gave no metadata: %s", self.step, replica.address, exc.details())
        return None
