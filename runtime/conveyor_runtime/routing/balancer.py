"""Client-side balancing over a step's replicas: least outstanding requests, health-watched, with retries.

Used by the gateway for the steps it calls and by a step for the steps it forwards to (see `protocol.route`).

Each replica gets its own channel (so HTTP/2 connections are never pinned to one pod) and a task that watches
its grpc.health.v1 status. Small calls travel as messages on one call stream per replica (`routing.call_stream`;
$CONVEYOR_STEP_CALLS=unary turns that off), larger ones as unary calls; both end alike, so everything below holds
for either. Every call carries the request's remaining time as its gRPC timeout. A call that
fails with UNAVAILABLE goes to another replica while the deadline allows; one refused for a full queue goes to
another replica with room, and the client sees RESOURCE_EXHAUSTED only when every replica is full. A replica
whose calls stall and whose health service then gives no answer is ejected (its calls go elsewhere) until it
answers again. A replica dropped from the endpoint list finishes its calls before its channel closes. A failure
that the called replica relayed from a later step is raised as that step's, and never retried here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from ..errors import DeadlineExceeded, ModelNotReady, StepCallError, UsageError
from ..protocol import InferenceStub, error_from_rpc, failed_step, pb
from ..protocol.call_stream import fits_stream
from ..protocol.health import HealthStub
from ..protocol.proto import health_pb2
from ..serving import TaskSet
from ..spec import GatewaySpec
from .call_stream import CallStream
from .endpoints import EndpointSource, watch_endpoints
from .replica import Replica

__all__ = [
    "CHANNEL_OPTIONS",
    "DEFAULT_TIMEOUT_S",
    "STEP_CALLS_ENV",
    "TOO_LARGE_DETAILS",
    "Balancer",
    "Replica",
    "call_streams_wanted",
]

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
#: The timeout of a step call whose request has no deadline (spec.gateway.defaultTimeoutSeconds's default).
DEFAULT_TIMEOUT_S: float = GatewaySpec.model_fields["defaultTimeoutSeconds"].default
#: How long a request waits for a replica of a step to become ready before UNAVAILABLE (within its deadline).
DEFAULT_WAIT_S = 30.0
#: gRPC's own RESOURCE_EXHAUSTED for a message over the receiver's limit: not a full queue, so never retried.
TOO_LARGE_DETAILS = "Received message larger than max"

_SERVING = health_pb2.HealthCheckResponse.SERVING

#: How calls to steps travel: `stream` (default: small calls as messages on one stream per replica, see
#: `protocol.call_stream`) or `unary` (a gRPC call each).
STEP_CALLS_ENV = "CONVEYOR_STEP_CALLS"
_STEP_CALLS = ("stream", "unary")


def call_streams_wanted(environ: dict[str, str] | None = None) -> bool:
    """Whether small step calls take a call stream, from $CONVEYOR_STEP_CALLS (unknown values are refused)."""
    value = (os.environ if environ is None else environ).get(STEP_CALLS_ENV, "").strip().lower() or "stream"
    if value not in _STEP_CALLS:
        raise UsageError(f"${STEP_CALLS_ENV}={value!r}: expected one of {', '.join(_STEP_CALLS)}")
    return value == "stream"


class Balancer:
    """Spreads one step's calls over its replicas; `ready` once any replica is in rotation.

    `full_memory_s`: how long a replica that answered "queue full" is trusted to stay full at the number of
    calls it then held (calls beyond it are refused here, without a round trip; see `Replica.room`).
    `stall_s`: a call outstanding this long gets its replica's health checked, with `probe_timeout_s`.
    `what`: how its health log lines name a replica before its address (default "step NAME replica").
    """

    def __init__(
        self,
        step: str,
        source: EndpointSource,
        *,
        on_ready_change: Callable[[], None] | None = None,
        retry_backoff_s: float = 0.5,
        wait_s: float = DEFAULT_WAIT_S,
        default_timeout_s: float = DEFAULT_TIMEOUT_S,
        full_memory_s: float = 5.0,
        stall_s: float = 2.0,
        probe_timeout_s: float = 2.0,
        call_streams: bool | None = None,
        what: str | None = None,
    ) -> None:
        for name, value in (("default_timeout_s", default_timeout_s), ("stall_s", stall_s), ("probe_timeout_s", probe_timeout_s)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.step = step
        #: what the health log lines call one of its replicas ("step NAME replica" unless told)
        self._what = what or f"step {step} replica"
        self.source = source
        self.replicas: dict[str, Replica] = {}
        self.pending = 0  # requests admitted by the executor that will call this step but have not yet
        self._on_ready_change = on_ready_change
        self._retry_backoff_s = retry_backoff_s
        self._wait_s = wait_s
        self._default_timeout_s = default_timeout_s
        self._full_memory_s = full_memory_s
        self._stall_s = stall_s
        self._probe_timeout_s = probe_timeout_s
        #: small calls as messages on one stream per replica (default: $CONVEYOR_STEP_CALLS, else yes)
        self.call_streams = call_streams_wanted() if call_streams is None else call_streams
        self._ready = asyncio.Event()
        self._changed = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._tasks = TaskSet(f"balancer of step {step}")
        self._retiring: set[Replica] = set()
        self._metadata: pb.ModelMetadataResponse | None = None
        self.metadata_epoch = 0
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Resolve the endpoints once (static sources are final) and keep watching dynamic ones."""
        if self.source.refresh_s is None:
            await watch_endpoints(self.source, self._set_addresses)
        else:
            self._watcher = self._tasks.spawn(watch_endpoints(self.source, self._set_addresses), name="watch-endpoints")

    async def aclose(self) -> None:
        """Close every channel at once (the gateway's server has already drained its requests)."""
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        await self._set_addresses([])
        await self._tasks.aclose()
        for replica in list(self._retiring):
            if replica.stream is not None:
                await replica.stream.aclose()
            await replica.channel.close(grace=None)
        self._retiring.clear()

    async def _set_addresses(self, addresses: list[str]) -> None:
        wanted = set(addresses)
        for address in [a for a in self.replicas if a not in wanted]:
            self._retire(self.replicas.pop(address))
            self._forget_metadata()  # the answer may have come from the replica that left
        for address in addresses:
            if address not in self.replicas:
                channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
                replica = Replica(address=address, channel=channel, stub=InferenceStub(channel))
                if self.call_streams:
                    replica.stream = CallStream(channel, address)
                self.replicas[address] = replica
                replica.task = self._tasks.spawn(self._watch_health(replica), name=f"health-{address}")
        self._update_ready()

    def _retire(self, replica: Replica) -> None:
        """Take a replica the endpoint list dropped out of rotation; its channel closes once its calls end."""
        replica.retired = True
        if replica.task is not None:
            replica.task.cancel()
        self._retiring.add(replica)
        if not self._closed:
            self._tasks.spawn(self._close_when_done(replica), name=f"close-{replica.address}")

    async def _close_when_done(self, replica: Replica) -> None:
        if replica.task is not None:
            await asyncio.gather(replica.task, return_exceptions=True)
        # close(grace) waits for the calls in flight, and every call ends by its deadline
        grace = max(0.0, replica.until - time.monotonic()) + 1.0
        if replica.stream is not None:  # an open stream would hold the channel's close to the whole grace
            await replica.stream.close_when_idle(grace)
        await replica.channel.close(grace=grace)
        self._retiring.discard(replica)

    # --- health ----------------------------------------------------------------------------------------------

    async def _watch_health(self, replica: Replica) -> None:
        """Follow the replica's health stream; reconnect after failures (a restarted replica comes back)."""
        stub = HealthStub(replica.channel)
        while True:
            try:
                call = stub.Watch(health_pb2.HealthCheckRequest(service=""))
                async for response in call:
                    self._set_health(replica, response.status == _SERVING)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # no Watch: poll Check instead
                    await self._poll_health(replica, stub)
                    return
            self._set_health(replica, False)
            await asyncio.sleep(self._retry_backoff_s)

    async def _poll_health(self, replica: Replica, stub: HealthStub) -> None:
        while True:
            try:
                response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5.0)
                self._set_health(replica, response.status == _SERVING)
            except grpc.aio.AioRpcError:
                self._set_health(replica, False)
            await asyncio.sleep(self._retry_backoff_s)

    def _set_health(self, replica: Replica, serving: bool) -> None:
        if replica.serving != serving:
            log.info("%s %s is %s", self._what, replica.address, "ready" if serving else "not ready")
            replica.serving = serving
            replica.learned.forget()  # a replica that (re)starts has an empty queue
            if serving:
                self._forget_metadata()  # a replica that (re)starts may serve a new model
            self._update_ready()

    def _suspect(self, replica: Replica) -> None:
        """A call to `replica` stalled or timed out: check that it still answers (once at a time)."""
        now = time.monotonic()
        if replica.probing or replica.retired or self._closed or now - replica.probed_at < self._stall_s:
            return  # one check at a time, and at most one per stall_s
        replica.probing = True
        replica.probed_at = now
        self._tasks.spawn(self._probe(replica), name=f"probe-{replica.address}")

    async def _probe(self, replica: Replica) -> None:
        """Eject the replica while its health service gives no answer within `probe_timeout_s`; take it back
        (and stop probing) at the first answer. A replica that answers, however slowly it computes, stays."""
        stub = HealthStub(replica.channel)
        try:
            while not replica.retired and not self._closed:
                try:
                    await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=self._probe_timeout_s)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        self._eject(replica)
                        await asyncio.sleep(self._retry_backoff_s)
                        continue
                # an answer, or a refused connection (the health watch takes a dead replica out)
                if replica.ejected:
                    log.warning("step %s replica %s answers again; back in rotation", self.step, replica.address)
                    replica.ejected = False
                    replica.learned.forget()
                    self._update_ready()
                return
        finally:
            replica.probing = False

    def _eject(self, replica: Replica) -> None:
        if replica.ejected:
            return
        log.warning(
            "step %s replica %s stopped answering (a call stalled %.1fs, a health check got no answer in %.1fs); "
            "out of rotation until it answers, its %d call(s) in flight go to other replicas",
            self.step, replica.address, self._stall_s, self._probe_timeout_s, len(replica.calls),
        )
        replica.ejected = True
        replica.abandon_calls()
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
        except TimeoutError:
            return False
        return True

    def snapshot(self) -> list[dict[str, Any]]:
        """Per replica: address, health, ejection, outstanding and served calls (for status pages and tests)."""
        return [
            {
                "address": r.address,
                "healthy": r.healthy,
                "ejected": r.ejected,
                "outstanding": r.outstanding,
                "served": r.served,
            }
            for r in self.replicas.values()
        ]

    def saturated(self) -> bool:
        """True when every replica in rotation is known to be full, counting the calls `pending` will make."""
        now = time.monotonic()
        free = 0
        healthy = False
        for replica in self.replicas.values():
            if replica.healthy:
                room = replica.room(now, self._full_memory_s)
                if room is None:
                    return False
                healthy = True
                free += room
        return healthy and free <= self.pending

    # --- calls -----------------------------------------------------------------------------------------------

    def _pick(self, tried: set[str], now: float) -> tuple[Replica | None, bool]:
        """The replica in rotation, untried and with room, that has the fewest outstanding calls (random among
        equals); and whether some replica was left out only because it is known to be full."""
        best: list[Replica] = []
        least = None
        full = False
        for replica in self.replicas.values():
            if not replica.healthy or replica.address in tried:
                continue
            if replica.room(now, self._full_memory_s) == 0:
                full = True
                continue
            if least is None or replica.outstanding < least:
                best, least = [replica], replica.outstanding
            elif replica.outstanding == least:
                best.append(replica)
        if not best:
            return None, full
        return (best[0] if len(best) == 1 else random.choice(best)), full

    async def _wait_for_change(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining > 0:
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, self._retry_backoff_s))
            except TimeoutError:
                pass

    async def infer(self, request: pb.ModelInferRequest, deadline: float | None = None) -> pb.ModelInferResponse:
        """Call ModelInfer on the best replica with the remaining time as its timeout (`deadline` None: the
        default timeout); retry elsewhere on UNAVAILABLE, a full queue or an ejected replica."""
        if deadline is None:
            deadline = time.monotonic() + self._default_timeout_s
        wait_until = min(deadline, time.monotonic() + self._wait_s)  # for a ready replica
        loop = asyncio.get_running_loop()
        tried: set[str] = set()
        unavailable: grpc.aio.AioRpcError | None = None
        full: grpc.aio.AioRpcError | None = None
        while True:
            if self._closed:
                raise ModelNotReady(f"step {self.step!r}: the gateway is shutting down; retry on another gateway")
            now = time.monotonic()
            timeout = deadline - now
            if timeout <= 0:
                break
            replica, known_full = self._pick(tried, now)
            if replica is None:
                if full is not None or known_full:
                    raise self.full_error(full)
                if now >= wait_until:
                    break
                tried.clear()  # every ready replica failed once: wait a moment, then try them again
                await self._wait_for_change(wait_until)
                continue
            replica.outstanding += 1
            replica.until = max(replica.until, deadline)
            stream = replica.stream
            call: Any
            if stream is not None and not stream.unsupported and fits_stream(request):
                call, streamed = stream.call(request, timeout), True
            else:
                call, streamed = replica.stub.ModelInfer(request, timeout=timeout), False
            replica.calls.add(call)
            stalled = loop.call_later(self._stall_s, self._suspect, replica)
            try:
                response: pb.ModelInferResponse = await call
            except asyncio.CancelledError:
                if call not in replica.abandoned or _cancelling():
                    raise
                tried.add(replica.address)  # the replica was ejected while it held this call
                continue
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                relayed_from = failed_step(exc)
                if relayed_from is not None:  # a later step failed; this replica did its part: no retry here
                    relayed = error_from_rpc(exc)
                    raise StepCallError(relayed_from, relayed.status, relayed.message, relayed=True) from None
                if streamed and replica.stream is not None and replica.stream.unsupported:
                    continue  # the replica has no call stream (an older version): call it again, unary
                if code == grpc.StatusCode.UNAVAILABLE:
                    log.debug("step %s replica %s unavailable (%s); retrying elsewhere", self.step, replica.address, exc.details())
                    unavailable = exc
                elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and not (exc.details() or "").startswith(TOO_LARGE_DETAILS):
                    replica.learn_full(time.monotonic(), holding=replica.outstanding - 1)
                    full = exc
                else:
                    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                        self._suspect(replica)
                    raise error_from_rpc(exc, step=self.step) from None
                tried.add(replica.address)
                continue
            finally:
                stalled.cancel()
                replica.outstanding -= 1
                replica.calls.discard(call)
                replica.abandoned.discard(call)
            replica.served += 1
            return response
        if full is not None:
            raise self.full_error(full)
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(f"step {self.step!r}: the request's deadline passed while waiting for a ready replica")
        if unavailable is not None:
            raise StepCallError(self.step, "UNAVAILABLE", unavailable.details() or "unavailable")
        raise ModelNotReady(
            f"step {self.step!r}: no ready replica among {self.source.describe()}; check that the step is running"
        )

    def full_error(self, answer: grpc.aio.AioRpcError | None = None) -> StepCallError:
        """RESOURCE_EXHAUSTED: the last full replica's own words, or (no call made) which replicas are full."""
        if answer is not None:
            return StepCallError(self.step, "RESOURCE_EXHAUSTED", answer.details() or "queue full")
        ready = sum(r.healthy for r in self.replicas.values())
        return StepCallError(
            self.step,
            "RESOURCE_EXHAUSTED",
            f"every replica's queue is full ({ready} ready); retry later, send smaller requests or add replicas",
        )

    def _forget_metadata(self) -> None:
        if self._metadata is not None:
            self._metadata = None
            self.metadata_epoch += 1

    async def metadata(self, timeout: float = 5.0) -> pb.ModelMetadataResponse | None:
        """The step's ModelMetadata from a ready replica; None if none answers in `timeout`.

        Cached until the replica set changes (one leaves, or one turns ready): a rollout of a step's model, op or
        config then reaches the gateway without restarting it. `metadata_epoch` counts the changes, for callers
        that derive facts from the answer.
        """
        if self._metadata is not None:
            return self._metadata
        until = time.monotonic() + timeout
        if not self.ready:  # e.g. a forwarding step's first call: its health watches have not answered yet
            await self.wait_ready(timeout)
        for replica in [r for r in self.replicas.values() if r.healthy]:
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            try:
                self._metadata = await replica.stub.ModelMetadata(pb.ModelMetadataRequest(name=self.step), timeout=remaining)
                return self._metadata
            except grpc.aio.AioRpcError as exc:
                log.warning("step %s replica %s gave no metadata: %s", self.step, replica.address, exc.details())
        return None


def _cancelling() -> bool:
    """Whether the running task itself is being cancelled (Python 3.11+; 3.10 cannot tell, and says no)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False
