"""Conveyor as `conveyor bench pipeline` runs it: `conveyor run MANIFEST` (`LocalPipeline`), loaded over gRPC by
`load.closed_loop` and `load.open_loop`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy.typing as npt

from conveyor_runtime.protocol import encode_tensors, pb

from ..load import LoadResult, closed_loop, open_loop
from ..local_pipeline import LocalPipeline
from ..pipeline_bench import variant_manifest
from .system import System
from .work import answer_labels

__all__ = ["ConveyorSystem"]


class ConveyorSystem(System):
    """`conveyor run` on the manifest as it is (``conveyor``) or with ``batching.policy: fill`` (``conveyor-fill``)."""

    def __init__(self, plan: Any, payloads: list[npt.NDArray[Any]], rows: int, policy: str = "") -> None:
        super().__init__(plan, payloads, rows)
        self.policy = policy
        self.name = "conveyor-fill" if policy == "fill" else "conveyor"
        self.pipeline: LocalPipeline | None = None
        self._variant: Path | None = None
        self._address = ""

    def start(self, workdir: Path) -> None:
        manifest = self.plan.manifest
        if self.policy:
            manifest = self._variant = variant_manifest(manifest, self.policy)
        directory = workdir / self.name
        directory.mkdir()
        self.pipeline = LocalPipeline.start(manifest, directory, http=False)
        addresses = self.pipeline.addresses()
        self._address = addresses["grpc"]
        policy = self.policy or self.plan.policy
        embedded = addresses.get("gatewayIn")
        gateway = f"gRPC gateway in step {embedded}'s process" if embedded else "gRPC gateway in a process of its own"
        guests = sorted(step for step, replicas in addresses["steps"].items() if any("inProcessWith" in r for r in replicas))
        placement = f"{', '.join(guests)} in their host's processes" if guests else "a process per step replica"
        self.description = (
            f"`conveyor run {manifest.name}` ({gateway}, {placement}; {self.plan.describe()}; "
            f"batching policy {policy}), loaded over gRPC by load.closed_loop"
        )

    def pids(self) -> list[int]:
        return [] if self.pipeline is None else list(self.pipeline.pids().values())

    def _request(self, payload: npt.NDArray[Any]) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name=self.plan.pipeline)
        encode_tensors(request, [("image", payload)])
        return request

    async def labels(self, payload: npt.NDArray[Any]) -> list[list[str]]:
        from conveyor_runtime.client import Client

        def call() -> list[list[str]]:
            with Client(self._address, model=self.plan.pipeline) as client:
                return answer_labels(client.infer({"image": payload})["labels"])

        return await asyncio.to_thread(call)

    async def closed_loop(self, concurrency: int, duration_s: float, warmup_s: float) -> LoadResult:
        requests = [self._request(p) for p in self.payloads]
        return await closed_loop(
            self._address,
            lambda n: requests[n % len(requests)],
            concurrency=concurrency,
            duration_s=duration_s,
            warmup_s=warmup_s,
            rows_per_request=self.rows,
        )

    async def open_loop(self, rate: float, duration_s: float, warmup_s: float) -> LoadResult:
        requests = [self._request(p) for p in self.payloads]
        return await open_loop(
            self._address,
            lambda n: requests[n % len(requests)],
            rate=rate,
            duration_s=duration_s,
            warmup_s=warmup_s,
            rows_per_request=self.rows,
        )

    def stop(self) -> None:
        if self.pipeline is not None:
            self.pipeline.stop()
            self.pipeline = None
        if self._variant is not None:
            self._variant.unlink(missing_ok=True)
            self._variant = None
