"""The pipeline executor: runs one request through the DAG over the steps' balancers, with its Prometheus series.

Tensors stay raw bytes from the client to the last step (see `protocol.wire`). A request is refused at the
entry (RESOURCE_EXHAUSTED, no step called) while some step of the pipeline has every replica known to be full,
so that under overload a rejection costs no step any work and comes back at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

from ..errors import InvalidRequest, RequestError
from ..protocol import TensorInfo, WireTensor, pb, wire_request, wire_tensors
from ..spec import ExecutionPlan, route_inputs
from .balancer import Balancer

__all__ = ["PipelineExecutor"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _infos(tensors: Sequence[pb.ModelMetadataResponse.TensorMetadata]) -> list[TensorInfo]:
    return [TensorInfo(t.name, t.datatype, tuple(t.shape)) for t in tensors]


class PipelineExecutor:
    """Runs one request through the DAG: independent branches in parallel, a join waits for all its inputs."""

    def __init__(self, plan: ExecutionPlan, balancers: Mapping[str, Balancer], registry: CollectorRegistry | None = None) -> None:
        self.plan = plan
        self.name = plan.pipeline
        self.balancers = dict(balancers)
        # per step: (the balancer's metadata_epoch it was read at, the step's input names)
        self._expected: dict[str, tuple[int, list[str] | None]] = {}
        self.registry = registry or CollectorRegistry()
        # process_cpu_seconds_total: the gateway's busy time, from which the operator sizes gateway replicas
        ProcessCollector(registry=self.registry)
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

    # --- readiness and metadata ---------------------------------------------------------------------------

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

    async def _expected_inputs(self, step: str, deadline: float | None) -> list[str] | None:
        balancer = self.balancers[step]
        epoch = balancer.metadata_epoch
        known = self._expected.get(step)
        if known is not None and known[0] == epoch:
            return known[1]
        timeout = 5.0 if deadline is None else min(5.0, deadline - time.monotonic())
        meta = await balancer.metadata(timeout) if timeout > 0 else None
        names = [t.name for t in meta.inputs] if meta is not None and meta.inputs else None
        if meta is not None:
            self._expected[step] = (epoch, names)
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
        reserved: set[str] = set()
        try:
            self._admit(reserved)
            if self.plan.is_chain:
                result = await self._run_chain(inputs, deadline, request_id, reserved)
            else:
                result = await self._run_dag(inputs, deadline, request_id, reserved)
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
            for step in reserved:
                self.balancers[step].pending -= 1
            self._requests.labels(self.name, code).inc()
            self._latency.labels(self.name).observe(time.monotonic() - start)

    def _admit(self, reserved: set[str]) -> None:
        """Refuse the request while a step is full; else count it as pending at every step it will call."""
        for step in self.plan.order:
            if self.balancers[step].saturated():
                raise self.balancers[step].full_error()
        for step in self.plan.order:
            self.balancers[step].pending += 1
            reserved.add(step)

    async def _call_step(
        self,
        step: str,
        upstream: Sequence[tuple[str, Mapping[str, WireTensor]]] | None,
        request_inputs: Mapping[str, WireTensor],
        deadline: float | None,
        request_id: str,
        reserved: set[str],
    ) -> dict[str, WireTensor]:
        if upstream is None:
            tensors: Mapping[str, WireTensor] = request_inputs
        else:
            tensors = route_inputs(step, upstream, await self._expected_inputs(step, deadline))
        if step in reserved:  # from here on the call itself counts at the step's balancer
            reserved.discard(step)
            self.balancers[step].pending -= 1
        start = time.monotonic()
        response = await self.balancers[step].infer(wire_request(step, tensors, request_id), deadline)
        self._step_timers[step].observe(time.monotonic() - start)
        return wire_tensors(response, trusted=True)

    async def _run_chain(
        self, inputs: Mapping[str, WireTensor], deadline: float | None, request_id: str, reserved: set[str]
    ) -> dict[str, WireTensor]:
        previous: tuple[str, dict[str, WireTensor]] | None = None
        for step in self.plan.order:
            upstream = None if previous is None else [previous]
            outputs = await self._call_step(step, upstream, inputs, deadline, request_id, reserved)
            previous = (step, outputs)
        assert previous is not None
        return previous[1]

    async def _run_dag(
        self, inputs: Mapping[str, WireTensor], deadline: float | None, request_id: str, reserved: set[str]
    ) -> dict[str, WireTensor]:
        tasks: dict[str, asyncio.Task[dict[str, WireTensor]]] = {}

        async def run(step: str) -> dict[str, WireTensor]:
            node = self.plan.nodes[step]
            if not node.inputs:
                return await self._call_step(step, None, inputs, deadline, request_id, reserved)
            upstream = [(name, await tasks[name]) for name in node.inputs]
            return await self._call_step(step, upstream, inputs, deadline, request_id, reserved)

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
