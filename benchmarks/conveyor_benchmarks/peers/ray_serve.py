"""Ray Serve peer: three deployments composed with DeploymentHandles behind Serve's HTTP proxy.

``Pipeline`` (the ingress; preprocess, as many replicas as the manifest's preprocess step) decodes the body
(`wire`), preprocesses, then awaits ``Classifier`` (the ONNX model: ``@serve.batch(max_batch_size, batch_wait_timeout_s)``,
one replica per Conveyor model instance, one session each) and ``TopK``; it answers the top-k labels as JSON. One
local Ray instance (``ray.init(num_cpus=CPUS, include_dashboard=False)``, usage stats off) in a child process
(``python -m conveyor_benchmarks.peers.ray_serve``), ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` unless the system is
``ray-default``, access logs off. Clients POST raw bytes with aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt

from .plan import PeerPlan, peer_plan
from .server_process import ServerProcess, free_port, wait_for_stop, write_ready
from .system import ServedSystem
from .wire import encode_body

__all__ = ["RayLayout", "RayServeSystem", "main", "ray_layout"]

INSTALL_HINT = "Ray Serve is not installed: pip install 'conveyor[peers]' (or drop ray from --systems)"


@dataclass(frozen=True)
class RayLayout:
    """Replicas, CPUs (Ray's logical CPUs, so that all fit on `cpus`) and in-flight limits of each deployment."""

    cpus: int
    pipeline_replicas: int
    classifier_replicas: int
    topk_replicas: int
    max_batch: int
    batch_wait_s: float
    pipeline_ongoing: int
    classifier_ongoing: int

    @property
    def replica_cpus(self) -> float:
        """Each replica's `num_cpus`: an equal share, so every replica fits on the cluster's CPUs."""
        return self.cpus / (self.pipeline_replicas + self.classifier_replicas + self.topk_replicas)


def ray_layout(plan: PeerPlan, cpus: int, max_clients: int) -> RayLayout:
    """The deployments for `plan` on `cpus` CPUs, loaded by up to `max_clients` concurrent clients.

    A classifier replica may hold two batches in flight (one computing, one filling) so batches can reach
    `max_batch`; the ingress admits every client (Serve's default of 5 in flight per replica would cap it).
    """
    return RayLayout(
        cpus=cpus,
        pipeline_replicas=plan.preprocess.replicas,
        classifier_replicas=plan.instances,
        topk_replicas=plan.postprocess.replicas,
        max_batch=plan.max_batch,
        batch_wait_s=plan.queue_delay_s,
        pipeline_ongoing=max(8, -(-max_clients // plan.preprocess.replicas)),
        classifier_ongoing=2 * plan.max_batch,
    )


def _build_app(plan: PeerPlan, layout: RayLayout) -> Any:
    """The Serve application (deployment classes are defined here so that importing this module needs no Ray)."""
    from ray import serve
    from ray.serve.handle import DeploymentHandle

    from .wire import decode_body
    from .work import answer_labels, load_classifier, load_op_step, run_op

    manifest = str(plan.manifest)
    options = {"num_cpus": layout.replica_cpus}

    class Classifier:
        def __init__(self, manifest: str) -> None:
            self.plan = peer_plan(Path(manifest))
            self.op = load_classifier(self.plan)
            self.op.warm_up([1, self.plan.max_batch])

        @serve.batch(max_batch_size=layout.max_batch, batch_wait_timeout_s=layout.batch_wait_s)  # type: ignore[untyped-decorator, misc, unused-ignore]
        async def __call__(self, images: list[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
            import numpy as np

            batch = np.concatenate(images)
            (logits,) = (await asyncio.to_thread(self.op.process, {"image": batch})).values()
            bounds = np.cumsum([len(i) for i in images])[:-1]
            return list(np.split(logits, bounds))

    class TopK:
        def __init__(self, manifest: str) -> None:
            self.plan = peer_plan(Path(manifest))
            self.op = load_op_step(self.plan, self.plan.postprocess)

        def __call__(self, logits: npt.NDArray[Any]) -> list[list[str]]:
            return answer_labels(run_op(self.op, {"logits": logits})["labels"])

    class Pipeline:
        def __init__(self, manifest: str, classifier: DeploymentHandle, topk: DeploymentHandle) -> None:
            self.plan = peer_plan(Path(manifest))
            self.op = load_op_step(self.plan, self.plan.preprocess)
            self.classifier = classifier
            self.topk = topk

        async def __call__(self, request: Any) -> list[list[str]]:
            """`request`: Starlette's; the labels go back as JSON (a malformed body fails with HTTP 500)."""
            array = decode_body(await request.body(), request.headers.get("content-type", ""))
            (images,) = (await asyncio.to_thread(run_op, self.op, {"image": array})).values()
            logits = await self.classifier.remote(images)
            return list(await self.topk.remote(logits))

    def deployment(cls: type, replicas: int, ongoing: int) -> Any:
        return serve.deployment(num_replicas=replicas, ray_actor_options=options, max_ongoing_requests=ongoing)(cls)

    classifier = deployment(Classifier, layout.classifier_replicas, layout.classifier_ongoing)
    topk = deployment(TopK, layout.topk_replicas, layout.pipeline_ongoing)
    pipeline = deployment(Pipeline, layout.pipeline_replicas, layout.pipeline_ongoing)
    return pipeline.bind(manifest, classifier.bind(manifest), topk.bind(manifest))


def main(argv: list[str] | None = None) -> None:
    """The server process: Ray, Serve's HTTP proxy on `--port`, the application; runs until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m conveyor_benchmarks.peers.ray_serve")
    parser.add_argument("manifest")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cpus", type=int, required=True)
    parser.add_argument("--max-clients", type=int, default=32)
    parser.add_argument("--ready", required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions
    from ray.serve.schema import LoggingConfig

    plan = peer_plan(Path(args.manifest))
    layout = ray_layout(plan, args.cpus, args.max_clients)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        logging_config = LoggingConfig(enable_access_log=False, log_level="WARNING")
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=args.port), logging_config=logging_config)
        serve.run(_build_app(plan, layout), name=plan.pipeline, route_prefix="/", logging_config=logging_config)
        info = {
            "port": args.port,
            "ray": ray.__version__,
            "throughput_optimized": os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED", "0"),
            "layout": layout.__dict__,
        }
        write_ready(Path(args.ready), info)
        wait_for_stop()
    finally:
        serve.shutdown()
        ray.shutdown()


class RayServeSystem(ServedSystem):
    """``ray`` (throughput-optimized mode) or ``ray-default``: the server process above, loaded with aiohttp."""

    def __init__(
        self,
        plan: PeerPlan,
        payloads: list[npt.NDArray[Any]],
        rows: int,
        *,
        cpus: int,
        max_clients: int,
        throughput_optimized: bool = True,
    ) -> None:
        super().__init__(plan, payloads, rows)
        self.name = "ray" if throughput_optimized else "ray-default"
        self.cpus, self.max_clients, self.throughput_optimized = cpus, max_clients, throughput_optimized
        self._url = ""

    def start(self, workdir: Path) -> None:
        try:
            import aiohttp  # noqa: F401
            import ray  # noqa: F401
        except ImportError:
            raise SystemExit(INSTALL_HINT) from None
        port = free_port()
        env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1" if self.throughput_optimized else "0"}
        args = [str(self.plan.manifest), "--port", str(port), "--cpus", str(self.cpus), "--max-clients", str(self.max_clients)]
        self.server = ServerProcess.start(self.name, "conveyor_benchmarks.peers.ray_serve", args, workdir, env=env)
        info = self.server.info()
        self._url = f"http://127.0.0.1:{port}/"
        layout = info["layout"]
        self.description = (
            f"Ray {info['ray']} Serve, RAY_SERVE_THROUGHPUT_OPTIMIZED={info['throughput_optimized']}, "
            f"ray.init(num_cpus={self.cpus}, include_dashboard=False); deployments Pipeline (preprocess, ingress) x"
            f"{layout['pipeline_replicas']} -> Classifier x{layout['classifier_replicas']} (@serve.batch "
            f"max_batch_size={layout['max_batch']}, batch_wait_timeout_s={layout['batch_wait_s']}, 1 ORT session x "
            f"{self.plan.intra_threads} thread(s) each, max_ongoing_requests={layout['classifier_ongoing']}) -> TopK x"
            f"{layout['topk_replicas']}, num_cpus={layout['cpus'] / (layout['pipeline_replicas'] + layout['classifier_replicas'] + layout['topk_replicas']):.3g} "
            f"per replica, access log off; aiohttp POSTs raw bytes to Serve's HTTP proxy"
        )


    async def _post(self, session: Any, payload: npt.NDArray[Any]) -> list[list[str]]:
        body, content_type = encode_body(payload)
        async with session.post(self._url, data=body, headers={"content-type": content_type}) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
            return list(json.loads(await response.read()))

    def _session(self, concurrency: int) -> Any:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))

    async def labels(self, payload: npt.NDArray[Any]) -> list[list[str]]:
        async with self._session(1) as session:
            return await self._post(session, payload)

    @contextlib.asynccontextmanager
    async def calls(self, connections: int) -> AsyncIterator[Callable[[int], Awaitable[None]]]:
        """`call(n)`: POST the n-th payload to Serve's HTTP proxy over at most `connections` connections."""
        import aiohttp

        bodies = [encode_body(p) for p in self.payloads]

        async with self._session(connections) as session:

            async def call(n: int) -> None:
                body, content_type = bodies[n % len(bodies)]
                async with session.post(self._url, data=body, headers={"content-type": content_type}) as response:
                    await response.read()
                    if response.status != 200:
                        raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)

            yield call


if __name__ == "__main__":
    main()
