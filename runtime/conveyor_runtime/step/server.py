"""A step's gRPC server: Open Inference Protocol plus `grpc.health.v1`, metrics on their own port, graceful stop.

Order of life: `start()` loads and warms up the model, binds, then reports SERVING; `stop()` reports
NOT_SERVING first, lets queued and in-flight requests finish within the grace period, then closes.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from ..errors import ConveyorError
from ..protocol import SERVICE_NAME, add_inference_servicer
from ..serving import MetricsEndpoint, format_address
from ..spec import StepSpec
from .metrics import StepMetrics
from .op_loop import OpLoop
from .servicer import StepServicer

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "StepServer", "create_step_server"]

log = logging.getLogger(__name__)

#: Requests above this get INVALID_ARGUMENT naming the largest input; gRPC itself refuses twice this
#: (RESOURCE_EXHAUSTED) before the request is read into memory.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


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
        max_message_bytes: int,
    ) -> None:
        self.spec = step
        self.host = host
        self.port = port
        self.metrics_port = metrics_port
        self.base_dir = base_dir or Path.cwd()
        self.grace_s = grace_s
        self.max_message_bytes = max_message_bytes
        self.metrics = StepMetrics(step.name)
        self.op_loop: OpLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._servicer: StepServicer | None = None
        self._health: health_aio.HealthServicer | None = None
        self._endpoint: MetricsEndpoint | None = None
        self._stopping = False
        self._stopped = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self._servicer is not None and self._servicer.ready

    async def start(self) -> None:
        """Load and warm up the model (off the event loop), bind, start, then report SERVING."""
        op_loop = await asyncio.to_thread(OpLoop.load, self.spec, self.base_dir, self.metrics)
        self.op_loop = op_loop
        await op_loop.start()
        batching = self.spec.batching
        server = grpc.aio.server(
            # Bounds memory beside maxQueueSize: requests in pre/postprocess or compute count here too.
            maximum_concurrent_rpcs=batching.maxQueueSize + op_loop.concurrency * max(1, batching.maxBatchSize) + 64,
            options=[
                ("grpc.max_receive_message_length", 2 * self.max_message_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
            ]
        )
        self._servicer = StepServicer(op_loop, max_message_bytes=self.max_message_bytes)
        add_inference_servicer(server, self._servicer)
        self._health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = format_address(self.host, self.port)
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            bound = 0
            reason = str(exc)
        else:
            reason = "the port may be in use"
        if not bound:
            await op_loop.aclose()
            raise ConveyorError(f"step {self.spec.name!r}: cannot listen on {address} ({reason}); choose another --port")
        self.port = bound
        if self.metrics_port is not None:
            self._endpoint = MetricsEndpoint(self.metrics.registry, self.host, self.metrics_port)
            try:
                self.metrics_port = await self._endpoint.start()
            except OSError as exc:
                await op_loop.aclose()
                raise ConveyorError(
                    f"step {self.spec.name!r}: cannot serve metrics on port {self.metrics_port} ({exc.strerror}); "
                    "choose another --metrics-port or 0 to disable"
                ) from exc
        self._server = server
        await server.start()
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._servicer.ready = True
        log.info(
            "step %s SERVING on %s (provider %s%s)",
            self.spec.name,
            format_address(self.host, self.port),
            op_loop.provider,
            f", metrics on port {self.metrics_port}" if self.metrics_port is not None else "",
        )

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, then finish queued and in-flight work for up to `grace` seconds, then close."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.grace_s if grace is None else grace
        try:
            if self._servicer is not None:
                self._servicer.ready = False
            if self._health is not None:
                await self._health.enter_graceful_shutdown()
            log.info("step %s: NOT_SERVING; draining for up to %.1fs", self.spec.name, grace)
            if self._server is not None:
                await self._server.stop(grace)
            if self.op_loop is not None:
                await self.op_loop.aclose()
        finally:
            if self._endpoint is not None:
                await self._endpoint.stop()
            self._stopped.set()
            log.info("step %s stopped", self.spec.name)

    async def wait_for_termination(self) -> None:
        """Return once `stop` has finished."""
        await self._stopped.wait()


def create_step_server(
    step: StepSpec,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    metrics_port: int | None = None,
    base_dir: Path | None = None,
    grace_s: float = 20.0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> StepServer:
    """A server for `step` (not started). ``port=0`` picks a free port; ``metrics_port=None`` serves no metrics."""
    return StepServer(
        step,
        host=host,
        port=port,
        metrics_port=metrics_port,
        base_dir=base_dir,
        grace_s=grace_s,
        max_message_bytes=max_message_bytes,
    )
