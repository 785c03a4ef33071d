"""The pipeline gateway: runs the DAG over the steps' replicas and serves it as one model (gRPC, HTTP, metrics).

Tensors stay raw bytes from the client to the last step (see `wire`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from . import __version__
from .balancer import Balancer, StepCallError
from .endpoints import DnsEndpoints, EndpointSource, StaticEndpoints
from .errors import InvalidRequest, RequestError
from .graph import ExecutionPlan, route_inputs
from .proto import open_inference_pb2 as pb
from .protocol import abort_with, add_inference_servicer, status_code
from .spec import PipelineManifest, step_resource_name
from .wire import WireTensor, build_request, tensors_from_request, tensors_from_response

__all__ = [
    "TensorInfo",
    "PipelineExecutor",
    "GatewayServicer",
    "Gateway",
    "create_gateway",
    "SERVER_OPTIONS",
    "http_status",
]

log = logging.getLogger(__name__)

SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.so_reuseport", 0),
]
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's metadata: name, datatype and shape (-1 for variable dimensions)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def _infos(tensors: Sequence[pb.ModelMetadataResponse.TensorMetadata]) -> list[TensorInfo]:
    return [TensorInfo(t.name, t.datatype, tuple(t.shape)) for t in tensors]


class PipelineExecutor:
    """Runs one request through the DAG: independent branches in parallel, a join waits for all its inputs."""

    def __init__(self, plan: ExecutionPlan, balancers: Mapping[str, Balancer], registry: CollectorRegistry | None = None) -> None:
        self.plan = plan
        self.name = plan.pipeline
        self.balancers = dict(balancers)
        self._expected: dict[str, list[str] | None] = {}
        self.registry = registry or CollectorRegistry()
        self._requests = Counter(
            "conveyor_gateway_requests", "Pipeline requests by final status", ["pipeline", "code"], registry=self.registry
        )
        self._latency = Histogram(
            "conveyor_gateway_request_seconds", "Pipeline request latency", ["pipeline"], buckets=_BUCKETS, registry=self.registry
        )
        self._step_latency = Histogram(
            "conveyor_gateway_step_seconds",
            "Latency of each step call seen from the gateway (includes retries)",
            ["pipeline", "step"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._step_timers = {name: self._step_latency.labels(self.name, name) for name in plan.order}

    # --- model identity and metadata ----------------------------------------------------------------------

    def check_model(self, name: str) -> None:
        if name and name != self.name:
            raise RequestError(f"unknown model {name!r}; this gateway serves {self.name!r}", status="NOT_FOUND")

    @property
    def ready(self) -> bool:
        return all(self.balancers[name].ready for name in self.plan.order)

    def not_ready_steps(self) -> list[str]:
        return [name for name in self.plan.order if not self.balancers[name].ready]

    async def _step_metadata(self, step: str) -> pb.ModelMetadataResponse | None:
        return await self.balancers[step].metadata()

    async def metadata(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        """The pipeline's inputs (the entry step's) and outputs (the output step's); empty while unknown."""
        entry = await self._step_metadata(self.plan.entry)
        output = await self._step_metadata(self.plan.output)
        return (_infos(entry.inputs) if entry else [], _infos(output.outputs) if output else [])

    async def _expected_inputs(self, step: str) -> list[str] | None:
        if step in self._expected:
            return self._expected[step]
        meta = await self._step_metadata(step)
        names = [t.name for t in meta.inputs] if meta is not None and meta.inputs else None
        if meta is not None:
            self._expected[step] = names
        return names

    # --- inference ----------------------------------------------------------------------------------------

    async def infer(
        self,
        inputs: Mapping[str, WireTensor],
        *,
        deadline: float | None = None,
        outputs: Sequence[str] | None = None,
        request_id: str = "",
    ) -> dict[str, WireTensor]:
        """Run the pipeline; `deadline` is a time.monotonic() instant that bounds every hop."""
        start = time.monotonic()
        code = "OK"
        try:
            if self.plan.is_chain:
                result = await self._run_chain(inputs, deadline, request_id)
            else:
                result = await self._run_dag(inputs, deadline, request_id)
            if outputs:
                missing = [name for name in outputs if name not in result]
                if missing:
                    raise InvalidRequest(
                        f"unknown output(s) {', '.join(map(repr, missing))}; the pipeline gives: {', '.join(result)}"
                    )
                result = {name: result[name] for name in outputs}
            return result
        except RequestError as exc:
            code = exc.status
            raise
        except BaseException:
            code = "INTERNAL"
            raise
        finally:
            self._requests.labels(self.name, code).inc()
            self._latency.labels(self.name).observe(time.monotonic() - start)

    async def _call_step(
        self,
        step: str,
        upstream: Sequence[tuple[str, Mapping[str, WireTensor]]] | None,
        request_inputs: Mapping[str, WireTensor],
        deadline: float | None,
        request_id: str,
    ) -> dict[str, WireTensor]:
        if upstream is None:
            tensors: Mapping[str, WireTensor] = request_inputs
        else:
            tensors = route_inputs(step, upstream, await self._expected_inputs(step))
        start = time.monotonic()
        response = await self.balancers[step].infer(build_request(step, tensors, request_id), deadline)
        self._step_timers[step].observe(time.monotonic() - start)
        return tensors_from_response(response)

    async def _run_chain(
        self, inputs: Mapping[str, WireTensor], deadline: float | None, request_id: str
    ) -> dict[str, WireTensor]:
        previous: tuple[str, dict[str, WireTensor]] | None = None
        for step in self.plan.order:
            outputs = await self._call_step(step, None if previous is None else [previous], inputs, deadline, request_id)
            previous = (step, outputs)
        assert previous is not None
        return previous[1]

    async def _run_dag(
        self, inputs: Mapping[str, WireTensor], deadline: float | None, request_id: str
    ) -> dict[str, WireTensor]:
        tasks: dict[str, asyncio.Task[dict[str, WireTensor]]] = {}

        async def run(step: str) -> dict[str, WireTensor]:
            node = self.plan.nodes[step]
            if not node.inputs:
                return await self._call_step(step, None, inputs, deadline, request_id)
            upstream = [(name, await tasks[name]) for name in node.inputs]
            return await self._call_step(step, upstream, inputs, deadline, request_id)

        for step in self.plan.order:
            tasks[step] = asyncio.create_task(run(step))
        try:
            done, _ = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_EXCEPTION)
            for task in done:  # the first failure wins, whichever branch it came from
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            return tasks[self.plan.output].result()
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)


class GatewayServicer:
    """`inference.GRPCInferenceService` for the pipeline: converts messages and delegates to the executor."""

    def __init__(self, executor: PipelineExecutor) -> None:
        self.executor = executor

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.executor.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        try:
            self.executor.check_model(request.name)
        except RequestError as exc:
            await abort_with(context, exc)
        return pb.ModelReadyResponse(ready=self.executor.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="conveyor", version=__version__, extensions=["binary_tensor_data"])

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            self.executor.check_model(request.name)
        except RequestError as exc:
            await abort_with(context, exc)
        inputs, outputs = await self.executor.metadata()
        response = pb.ModelMetadataResponse(name=self.executor.name, versions=["1"], platform="conveyor_pipeline")
        for info in inputs:
            response.inputs.add(name=info.name, datatype=info.datatype, shape=info.shape)
        for info in outputs:
            response.outputs.add(name=info.name, datatype=info.datatype, shape=info.shape)
        return response

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        try:
            self.executor.check_model(request.model_name)
            inputs = tensors_from_request(request)
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            requested = [o.name for o in request.outputs]
            outputs = await self.executor.infer(inputs, deadline=deadline, outputs=requested, request_id=request.id)
        except RequestError as exc:
            if not isinstance(exc, (StepCallError, InvalidRequest)):
                log.info("request %s failed: %s", request.id or "-", exc)
            await abort_with(context, exc)
            raise  # unreachable: abort raises
        except Exception as exc:
            log.exception("request %s failed unexpectedly", request.id or "-")
            await abort_with(context, exc)
            raise
        response = pb.ModelInferResponse(model_name=self.executor.name, model_version="1", id=request.id)
        for name, tensor in outputs.items():
            response.outputs.add(name=name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(tensor.raw)
        return response


class Gateway:
    """The gateway process's servers: gRPC (inference + health), HTTP/REST and Prometheus metrics."""

    def __init__(
        self,
        manifest: PipelineManifest,
        sources: Mapping[str, EndpointSource],
        *,
        host: str = "0.0.0.0",
        grpc_port: int = 8001,
        http_port: int | None = 8000,
        metrics_port: int | None = None,
    ) -> None:
        self.plan = ExecutionPlan.from_manifest(manifest)
        missing = [name for name in self.plan.order if name not in sources]
        if missing:
            raise ValueError(f"no endpoint source for step(s) {', '.join(missing)}")
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.metrics_port = metrics_port
        self.balancers = {name: Balancer(name, sources[name], on_ready_change=self._on_ready_change) for name in self.plan.order}
        self.executor = PipelineExecutor(self.plan, self.balancers)
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._runners: list[web.AppRunner] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()

    @property
    def name(self) -> str:
        return self.plan.pipeline

    def _on_ready_change(self) -> None:
        task = asyncio.get_running_loop().create_task(self._publish_health())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_health(self) -> None:
        ready = self.executor.ready
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", self.name):
            await self.health.set(service, status)
        if ready:
            log.info("pipeline %s is ready: every step has a ready replica", self.name)
        else:
            log.info("pipeline %s is not ready; waiting for step(s) %s", self.name, ", ".join(self.executor.not_ready_steps()))

    async def start(self) -> None:
        """Bind the ports (0 picks a free one; the real ports are set afterwards) and start watching the steps."""
        await self._publish_health()
        server = grpc.aio.server(options=SERVER_OPTIONS)
        add_inference_servicer(server, GatewayServicer(self.executor))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        port = server.add_insecure_port(f"{self.host}:{self.grpc_port}")
        if port == 0:
            raise OSError(f"cannot bind gRPC port {self.host}:{self.grpc_port}; is another server using it?")
        self.grpc_port = port
        await server.start()
        self._server = server
        if self.http_port is not None:
            from .http_api import create_http_app

            self.http_port = await self._serve_app(create_http_app(self.executor), self.http_port)
        if self.metrics_port is not None:
            self.metrics_port = await self._serve_app(_metrics_app(self.executor.registry), self.metrics_port)
        for balancer in self.balancers.values():
            await balancer.start()
        log.info(
            "gateway for pipeline %s: gRPC %s:%s, HTTP %s, metrics %s",
            self.name,
            self.host,
            self.grpc_port,
            self.http_port,
            self.metrics_port,
        )

    async def _serve_app(self, app: web.Application, port: int) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, port)
        await site.start()
        self._runners.append(runner)
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """True once every step has a ready replica (False if `timeout` passes first)."""
        results = await asyncio.gather(*(b.wait_ready(timeout) for b in self.balancers.values()))
        return all(results)

    async def stop(self, grace: float | None = 5.0) -> None:
        """Report NOT_SERVING, finish in-flight requests within `grace`, then close every connection."""
        await self.health.enter_graceful_shutdown()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if self._server is not None:
            await self._server.stop(grace)
        for balancer in self.balancers.values():
            await balancer.aclose()
        for task in list(self._tasks):
            task.cancel()
        self._stopped.set()

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()


def _metrics_app(registry: CollectorRegistry) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


def create_gateway(
    manifest: PipelineManifest,
    *,
    endpoints: Mapping[str, Sequence[str]] | None = None,
    dns_suffix: str = "",
    step_port: int = 9000,
    refresh_s: float = 5.0,
    host: str = "0.0.0.0",
    grpc_port: int = 8001,
    http_port: int | None = 8000,
    metrics_port: int | None = None,
) -> Gateway:
    """A gateway whose steps are at the given static `endpoints`, or else at their headless Service's DNS name."""
    endpoints = endpoints or {}
    unknown = [name for name in endpoints if name not in {s.name for s in manifest.spec.steps}]
    if unknown:
        raise ValueError(f"--endpoints names unknown step(s) {', '.join(unknown)}")
    sources: dict[str, EndpointSource] = {}
    for step in manifest.spec.steps:
        if step.name in endpoints:
            sources[step.name] = StaticEndpoints(endpoints[step.name])
        else:
            dns_name = step_resource_name(manifest.metadata.name, step.name) + dns_suffix
            sources[step.name] = DnsEndpoints(dns_name, step_port, refresh_s)
    return Gateway(manifest, sources, host=host, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port)


def http_status(error: BaseException) -> int:
    """The HTTP status for an error (used by the REST API)."""
    return _HTTP_STATUS.get(status_code(error).name, 500)


_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "OUT_OF_RANGE": 400,
    "FAILED_PRECONDITION": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
}
