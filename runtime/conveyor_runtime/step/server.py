"""A step's gRPC server: Open Inference Protocol plus `grpc.health.v1`, metrics on their own port, graceful stop.

Order of life: `start()` loads and warms up the model, binds, then reports SERVING. `stop()` reports
NOT_SERVING at once, keeps answering new calls for the pre-stop delay (endpoints still list the pod), ends the
health Watch streams, then refuses new calls and returns as soon as queued and in-flight requests are done
(the grace period is only the upper bound). A dead batcher reports NOT_SERVING at once and sets `failure`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import grpc.aio

from ..errors import ConveyorError
from ..protocol import SERVICE_NAME, add_inference_servicer
from ..routing import DEFAULT_TIMEOUT_S
from ..serving import SERVING, HealthService, MetricsEndpoint, format_address
from ..spec import IN_PROCESS_STEPS_ENV, StepSpec
from .call_streams import CallStreams
from .forwarder import Forwarder, PeerSources
from .metrics import StepMetrics
from .op_loop import OpLoop
from .servicer import StepServicer

__all__ = ["DEFAULT_GRACE_S", "DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_PRE_STOP_S", "StepServer", "create_step_server"]

log = logging.getLogger(__name__)

#: Requests above this get INVALID_ARGUMENT naming the largest input; gRPC itself refuses twice this
#: (RESOURCE_EXHAUSTED) before the request is read into memory.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Upper bound of a drain after SIGTERM; the drain itself ends as soon as the work is done.
DEFAULT_GRACE_S = 20.0
#: What `conveyor step` waits after SIGTERM, still answering calls, while endpoint lists drop the pod.
DEFAULT_PRE_STOP_S = 5.0
#: Calls a forwarding step may hold beyond its own work: requests whose outputs it sent on and whose answer from
#: the later steps it awaits (the gateway's maxConcurrentRequests bounds them per gateway).
FORWARDING_HEADROOM = 4096


class StepServer:
    """Serves one step; see `create_step_server`."""

    def __init__(
        self,
        step: StepSpec,
        *,
        host: str,
        port: int,
        metrics_port: int | None,
        base_dir: Path | None,
        grace_s: float,
        pre_stop_s: float,
        max_message_bytes: int,
        where: str,
        peers: PeerSources | None,
        in_process: Sequence[tuple[StepSpec, str]] = (),
    ) -> None:
        self.spec = step
        #: the steps that run in this process (`inProcessWith` this one), each with its field path for errors
        self.in_process = list(in_process)
        self.peers = peers
        self.host = host
        self.port = port
        self.metrics_port = metrics_port
        self.base_dir = base_dir or Path.cwd()
        self.grace_s = grace_s
        self.pre_stop_s = pre_stop_s
        self.max_message_bytes = max_message_bytes
        self.where = where
        self.metrics = StepMetrics(step.name)
        self.op_loop: OpLoop | None = None
        #: this step's op loop first, then those of the steps that run in its process
        self.op_loops: list[OpLoop] = []
        self._server: grpc.aio.Server | None = None
        self._servicer: StepServicer | None = None
        self._call_streams: CallStreams | None = None
        self._forwarder: Forwarder | None = None
        self._health = HealthService(["", SERVICE_NAME])
        self._endpoint: MetricsEndpoint | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        #: Why the step can no longer serve (its batcher died); None while healthy.
        self.failure: BaseException | None = None
        self._failed = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self._servicer is not None and self._servicer.ready

    @property
    def servicer(self) -> StepServicer:
        """The servicer of the steps in this process (once started): what a gateway in the same process calls."""
        if self._servicer is None:
            raise RuntimeError(f"step {self.spec.name!r} is not started")
        return self._servicer

    async def start(self) -> None:
        """Load and warm up the model (off the event loop), bind, start, then report SERVING."""
        try:
            for spec, where, metrics in [
                (self.spec, self.where, self.metrics),
                *((guest, at, StepMetrics(guest.name, self.metrics.registry)) for guest, at in self.in_process),
            ]:
                loaded = await asyncio.to_thread(OpLoop.load, spec, self.base_dir, metrics, where=where)
                self.op_loops.append(loaded)
                await loaded.start(on_failure=self._batcher_died)
        except BaseException:
            await self._close_op_loops()
            raise
        op_loop = self.op_loop = self.op_loops[0]
        if self.peers is not None:
            self._forwarder = Forwarder(self.spec.name, self.peers, self.metrics.registry, default_timeout_s=DEFAULT_TIMEOUT_S)
        own_work = sum(_own_work(loop) for loop in self.op_loops)
        # Bounds memory beside maxQueueSize: requests in pre/postprocess or compute count here too.
        max_calls = own_work + (FORWARDING_HEADROOM if self._forwarder is not None else 0)
        server = grpc.aio.server(
            maximum_concurrent_rpcs=max_calls,
            options=[
                ("grpc.max_receive_message_length", 2 * self.max_message_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
            ],
        )
        self._servicer = StepServicer(self.op_loops, max_message_bytes=self.max_message_bytes, forwarder=self._forwarder)
        add_inference_servicer(server, self._servicer)
        # small calls as messages on long-lived streams, bounded as unary calls are (each stream counts once above)
        self._call_streams = CallStreams(self._servicer.ModelInfer, max_calls=max_calls)
        self._call_streams.add_to(server)
        self._health.add_to(server)
        address = format_address(self.host, self.port)
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            bound = 0
            reason = str(exc)
        else:
            reason = "the port may be in use"
        if not bound:
            await self._close_op_loops()
            raise ConveyorError(f"step {self.spec.name!r}: cannot listen on {address} ({reason}); choose another --port")
        self.port = bound
        if self.metrics_port is not None:
            self._endpoint = MetricsEndpoint(self.metrics.registry, self.host, self.metrics_port)
            try:
                self.metrics_port = await self._endpoint.start()
            except OSError as exc:
                await self._close_op_loops()
                raise ConveyorError(
                    f"step {self.spec.name!r}: cannot serve metrics on port {self.metrics_port} ({exc.strerror}); "
                    "choose another --metrics-port or 0 to disable"
                ) from exc
        self._server = server
        await server.start()
        for service in ("", SERVICE_NAME):
            self._health.set(service, SERVING)  # ignored once a dead batcher has shut health down
        self._servicer.ready = self.failure is None
        log.info(
            "step %s SERVING on %s (provider %s%s%s)",
            self.spec.name,
            format_address(self.host, self.port),
            op_loop.provider,
            f", metrics on port {self.metrics_port}" if self.metrics_port is not None else "",
            "".join(f", in process: step {loop.name}" for loop in self.op_loops[1:]),
        )

    async def _close_op_loops(self) -> None:
        for loop in self.op_loops:
            await loop.aclose()

    def _batcher_died(self, error: BaseException) -> None:
        log.critical(
            "step %s: the batcher stopped (%r); reporting NOT_SERVING and exiting so that the replica restarts",
            self.spec.name,
            error,
        )
        self.failure = error
        if self._servicer is not None:
            self._servicer.ready = False
        self._health.shut_down()
        self._failed.set()

    async def serve_until(self, stop: asyncio.Event) -> None:
        """Return when `stop` is set or the step has failed (see `failure`), whichever comes first."""
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._failed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def stop(self, grace: float | None = None, *, hurry: asyncio.Event | None = None) -> None:
        """NOT_SERVING; answer calls for the pre-stop delay (cut short by `hurry`); end health watches; drain; close.

        The drain ends when the last queued or in-flight request is answered, or after `grace` seconds.
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.grace_s if grace is None else grace
        try:
            if self._servicer is not None:
                self._servicer.ready = False
            self._health.shut_down()
            pre_stop = self.pre_stop_s if self._server is not None and self.failure is None else 0.0
            if pre_stop > 0 and not (hurry is not None and hurry.is_set()):
                log.info(
                    "step %s: NOT_SERVING; still answering calls for the %.1fs pre-stop delay (signal again to skip it)",
                    self.spec.name,
                    pre_stop,
                )
                await _wait_at_most(hurry, pre_stop)
            self._health.end_watches()
            log.info("step %s: NOT_SERVING; refusing new calls, draining for up to %.1fs", self.spec.name, grace)
            started = time.monotonic()
            if self._call_streams is not None:
                self._call_streams.drain()  # else each open call stream would hold the drain to the whole grace
            if self._server is not None:
                await self._server.stop(grace)
            await self._close_op_loops()
            if self._forwarder is not None:
                await self._forwarder.aclose()
            took = time.monotonic() - started
            if took >= grace:
                log.warning("step %s: the %.1fs grace period ran out; calls still running were cancelled", self.spec.name, grace)
            else:
                log.info("step %s: drained in %.2fs", self.spec.name, took)
        finally:
            if self._endpoint is not None:
                await self._endpoint.stop()
            self._stopped.set()
            log.info("step %s stopped", self.spec.name)

    async def wait_for_termination(self) -> None:
        """Return once `stop` has finished."""
        await self._stopped.wait()


def _own_work(loop: OpLoop) -> int:
    """Calls a step may hold for its own work: its queue, its batches in compute, and some in pre/postprocess."""
    batching = loop.spec.batching
    return batching.maxQueueSize + loop.concurrency * max(1, batching.maxBatchSize) + 64


async def _wait_at_most(event: asyncio.Event | None, seconds: float) -> None:
    """Sleep `seconds`, or less if `event` is set meanwhile."""
    if event is None:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:  # not the builtin TimeoutError before Python 3.11
        pass


def create_step_server(
    step: StepSpec,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    metrics_port: int | None = None,
    base_dir: Path | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    pre_stop_s: float = 0.0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    where: str = "step",
    peers: PeerSources | None = None,
    in_process: Sequence[StepSpec] = (),
    in_process_where: Sequence[str] = (),
) -> StepServer:
    """A server for `step` (not started). ``port=0`` picks a free port; ``metrics_port=None`` serves no metrics.

    ``pre_stop_s`` is 0 here (tests, embedding); `conveyor step` defaults to `DEFAULT_PRE_STOP_S`. ``where`` is
    the step's field path in errors about its spec (``spec.steps[2]`` when it came from a manifest). ``peers`` says
    where the steps it may forward to are (`peer_sources`); None: it forwards nothing. ``in_process`` are the steps
    that run in this step's process (`inProcessWith` it), served on the same port; ``in_process_where`` their field
    paths in errors (default: their place in $CONVEYOR_IN_PROCESS_STEPS).
    """
    wheres = list(in_process_where) or [f"{IN_PROCESS_STEPS_ENV}[{index}]" for index in range(len(in_process))]
    return StepServer(
        step,
        host=host,
        port=port,
        metrics_port=metrics_port,
        base_dir=base_dir,
        grace_s=grace_s,
        pre_stop_s=pre_stop_s,
        max_message_bytes=max_message_bytes,
        where=where,
        peers=peers,
        in_process=list(zip(in_process, wheres)),
    )
