"""The gateway process's servers: gRPC (inference + health), HTTP/REST and Prometheus metrics, and their lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from ..protocol import add_inference_servicer
from ..routing import Balancer, DnsEndpoints, EndpointSource, StaticEndpoints, StepClient
from ..serving import NOT_SERVING, SERVING, HealthService, HttpSite, MetricsEndpoint, TaskSet
from ..spec import STEP_GRPC_PORT, ExecutionPlan, PipelineManifest, step_resource_name
from .admission import Admission
from .executor import PipelineExecutor
from .http import create_http_app
from .servicer import GatewayServicer

__all__ = ["Gateway", "create_gateway", "server_options"]

log = logging.getLogger(__name__)


def server_options(max_request_bytes: int) -> list[tuple[str, Any]]:
    """gRPC server options for a gateway whose requests may be `max_request_bytes` long.

    The transport takes up to twice the limit so that a request just over it reaches the servicer and gets
    INVALID_ARGUMENT naming the limit; beyond that gRPC itself refuses the message (RESOURCE_EXHAUSTED)
    before buffering it.
    """
    return [
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", min(2 * max_request_bytes, 2**31 - 1)),
        ("grpc.so_reuseport", 0),
    ]


class Gateway:
    """The gateway process's servers: gRPC (inference + health), HTTP/REST and Prometheus metrics.

    Steps are called over their replicas (`sources`), except those in `in_process`: steps served by the process this
    gateway runs in (`conveyor run --gateway embedded`), called in memory.
    """

    def __init__(
        self,
        manifest: PipelineManifest,
        sources: Mapping[str, EndpointSource],
        *,
        in_process: Mapping[str, StepClient] | None = None,
        host: str = "0.0.0.0",
        grpc_port: int = 8001,
        http_port: int | None = 8000,
        metrics_port: int | None = None,
    ) -> None:
        self.plan = ExecutionPlan.from_manifest(manifest)
        in_process = in_process or {}
        missing = [name for name in self.plan.order if name not in sources and name not in in_process]
        if missing:
            raise ValueError(f"no endpoint source for step(s) {', '.join(missing)}")
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.metrics_port = metrics_port
        self.limits = manifest.spec.gateway
        #: how each step is called: in memory where it runs in this process (`in_process`), else over its replicas
        self.balancers: dict[str, StepClient] = {
            name: in_process[name]
            if name in in_process
            else Balancer(
                name,
                sources[name],
                on_ready_change=self._on_ready_change,
                default_timeout_s=self.limits.defaultTimeoutSeconds,
            )
            for name in self.plan.order
        }
        self.executor = PipelineExecutor(self.plan, self.balancers, forward=self.limits.dataPath == "stepToStep")
        self.health = HealthService(["", self.plan.pipeline])
        admission = Admission(self.limits.maxConcurrentRequests, self.limits.defaultTimeoutSeconds)
        self.servicer = GatewayServicer(self.executor, admission, max_request_bytes=self.limits.maxRequestBytes)
        self.serving = False
        self._server: grpc.aio.Server | None = None
        self._sites: list[HttpSite] = []
        self._tasks = TaskSet(f"gateway {self.name}")
        self._stopped = asyncio.Event()
        self._published_ready: bool | None = None

    @property
    def name(self) -> str:
        return self.plan.pipeline

    def _on_ready_change(self) -> None:
        self._tasks.spawn(self._publish_health(), name="publish-health")

    async def _publish_health(self) -> None:
        ready = self.executor.ready
        if ready == self._published_ready:
            return  # several steps changed at once: one task already published this state
        self._published_ready = ready
        for service in ("", self.name):
            self.health.set(service, SERVING if ready else NOT_SERVING)
        if ready:
            log.info("pipeline %s is ready: every step has a ready replica", self.name)
        else:
            log.info("pipeline %s is not ready; waiting for step(s) %s", self.name, ", ".join(self.executor.not_ready_steps()))

    async def start(self) -> None:
        """Bind the ports (0 picks a free one; the real ports are set afterwards) and start watching the steps."""
        await self._publish_health()
        server = grpc.aio.server(options=server_options(self.limits.maxRequestBytes))
        add_inference_servicer(server, self.servicer)
        self.health.add_to(server)
        port = server.add_insecure_port(f"{self.host}:{self.grpc_port}")
        if port == 0:
            raise OSError(f"cannot bind gRPC port {self.host}:{self.grpc_port}; is another server using it?")
        self.grpc_port = port
        await server.start()
        self._server = server
        if self.http_port is not None:
            app = create_http_app(self.servicer, serving=lambda: self.serving)
            # the app decompresses bodies itself, bounded (see gateway.http)
            self.http_port = await self._serve(HttpSite(app, self.host, self.http_port, auto_decompress=False))
        if self.metrics_port is not None:
            self.metrics_port = await self._serve(MetricsEndpoint(self.executor.registry, self.host, self.metrics_port))
        for balancer in self.balancers.values():
            await balancer.start()
        self.serving = True
        log.info(
            "gateway for pipeline %s: gRPC %s:%s, HTTP %s, metrics %s",
            self.name,
            self.host,
            self.grpc_port,
            self.http_port,
            self.metrics_port,
        )

    async def _serve(self, site: HttpSite) -> int:
        port = await site.start()
        self._sites.append(site)
        return port

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """True once every step has a ready replica (False if `timeout` passes first)."""
        results = await asyncio.gather(*(b.wait_ready(timeout) for b in self.balancers.values()))
        return all(results)

    async def stop(self, grace: float | None = 5.0, *, pre_stop: float = 0.0) -> None:
        """Report NOT_SERVING, keep answering for `pre_stop` seconds (while Service endpoints drop this pod),
        then finish in-flight requests within `grace` and close every connection."""
        self.serving = False
        self.health.shut_down()
        if pre_stop > 0:
            log.info("gateway %s: not ready; still answering for %.1fs before draining", self.name, pre_stop)
            await asyncio.sleep(pre_stop)
        self.health.end_watches()  # open Watch streams would otherwise hold the drain to the whole grace
        for site in self._sites:
            await site.stop()
        self._sites.clear()
        if self._server is not None:
            await self._server.stop(grace)
        for balancer in self.balancers.values():
            await balancer.aclose()
        await self._tasks.aclose()
        self.servicer.trimmer.cancel()
        self._stopped.set()

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()


def create_gateway(
    manifest: PipelineManifest,
    *,
    endpoints: Mapping[str, Sequence[str]] | None = None,
    dns_suffix: str = "",
    step_port: int = STEP_GRPC_PORT,
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
