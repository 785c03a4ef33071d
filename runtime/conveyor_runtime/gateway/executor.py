"""The pipeline executor: runs one request through the DAG over the steps' balancers, with its Prometheus series.

Tensors stay raw bytes from the client to the last step (see `protocol.wire`). With `spec.gateway.dataPath:
stepToStep` (the default) the gateway calls only the first step of each chain (see `ExecutionPlan.chain_after`)
and asks it to forward its outputs along the chain (`protocol.route`): tensors between two steps of a chain never
pass through the gateway. Whatever a step does not forward, the gateway carries on from the step after the one that
answered, so results are the same either way; joins and fan-outs are always run here.

A request is refused at the entry (RESOURCE_EXHAUSTED, no step called) while some step that the gateway calls has
every replica known to be full, or a step reached by forwarding has relayed "queue full" while holding as many of
this gateway's requests as are now on their way through it (`ForwardedLimits`), so that under overload a
rejection costs no step any work and comes back at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

from ..errors import InvalidRequest, RequestError, StepCallError, StepFailed
from ..protocol import TensorInfo, WireTensor, answered_by, pb, set_route, wire_request, wire_tensors
from ..routing import TOO_LARGE_DETAILS, InputNames, StepClient
from ..spec import ExecutionPlan, route_inputs
from .forwarded_limits import ForwardedLimits

__all__ = ["PipelineExecutor"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _infos(tensors: Sequence[pb.ModelMetadataResponse.TensorMetadata]) -> list[TensorInfo]:
    return [TensorInfo(t.name, t.datatype, tuple(t.shape)) for t in tensors]


class PipelineExecutor:
    """Runs one request through the DAG: independent branches in parallel, a join waits for all its inputs."""

    def __init__(
        self,
        plan: ExecutionPlan,
        balancers: Mapping[str, StepClient],
        registry: CollectorRegistry | None = None,
        *,
        forward: bool = True,
    ) -> None:
        self.plan = plan
        self.name = plan.pipeline
        self.balancers = dict(balancers)
        #: ask steps to forward their outputs along chains (spec.gateway.dataPath stepToStep)
        self.forward = forward
        self._input_names = InputNames()
        self.forwarded_limits = ForwardedLimits()
        self._chains = {head: (head, *plan.chain_after(head)) for head in plan.chain_heads()}
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
            if len(self._chains) == 1:
                result = await self._run_chain(self.plan.entry, None, inputs, deadline, request_id, reserved)
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
        refusal = self.forwarded_limits.refusal(time.monotonic())
        if refusal is not None:
            raise refusal
        for step in self.plan.order:
            self.balancers[step].pending += 1
            reserved.add(step)

    async def _call_step(
        self,
        step: str,
        upstream: Sequence[tuple[str, Mapping[str, WireTensor]]] | None,
        request_inputs: Mapping[str, WireTensor],
        route: Sequence[str],
        deadline: float | None,
        request_id: str,
        reserved: set[str],
    ) -> tuple[str, dict[str, WireTensor]]:
        """Call `step` asking it to forward through `route`; the step that answered, and its outputs."""
        if upstream is None:
            tensors: Mapping[str, WireTensor] = request_inputs
        else:
            tensors = route_inputs(step, upstream, await self._input_names.of(self.balancers[step], deadline))
        if step in reserved:  # from here on the call itself counts at the step's balancer
            reserved.discard(step)
            self.balancers[step].pending -= 1
        request = wire_request(step, tensors, request_id)
        set_route(request, route)
        start = time.monotonic()
        self.forwarded_limits.enter(route)
        try:
            response = await self.balancers[step].infer(request, deadline)
        except StepCallError as exc:
            full = exc.status == "RESOURCE_EXHAUSTED" and TOO_LARGE_DETAILS not in exc.message
            if exc.relayed and full and exc.step in route:
                self.forwarded_limits.learn_full(exc, time.monotonic())
            raise
        finally:
            self.forwarded_limits.leave(route)
        self._step_timers[step].observe(time.monotonic() - start)
        answered = answered_by(response) or step
        if answered != step and answered not in route:
            raise StepFailed(f"step {step!r} answered with the outputs of {answered!r}, which is not on its route {list(route)}")
        return answered, wire_tensors(response, trusted=True)

    async def _run_chain(
        self,
        head: str,
        upstream: Sequence[tuple[str, Mapping[str, WireTensor]]] | None,
        inputs: Mapping[str, WireTensor],
        deadline: float | None,
        request_id: str,
        reserved: set[str],
    ) -> dict[str, WireTensor]:
        """Run the chain that starts at `head`: forwarded as far as its steps go, then on from the step after the
        one that answered; the outputs of the chain's last step."""
        chain = self._chains[head]
        at = 0
        while True:
            route = chain[at + 1 :] if self.forward else ()
            answered, outputs = await self._call_step(chain[at], upstream, inputs, route, deadline, request_id, reserved)
            at = chain.index(answered, at)
            if at == len(chain) - 1:
                return outputs
            at += 1
            upstream = [(answered, outputs)]

    async def _run_dag(
        self, inputs: Mapping[str, WireTensor], deadline: float | None, request_id: str, reserved: set[str]
    ) -> dict[str, WireTensor]:
        """Each chain in a task of its own, keyed by its last step (whose outputs the next chains take): independent
        branches run in parallel and a join waits for all its inputs."""
        tasks: dict[str, asyncio.Task[dict[str, WireTensor]]] = {}

        async def run(head: str) -> dict[str, WireTensor]:
            node = self.plan.nodes[head]
            if not node.inputs:
                return await self._run_chain(head, None, inputs, deadline, request_id, reserved)
            upstream = [(name, await tasks[name]) for name in node.inputs]
            return await self._run_chain(head, upstream, inputs, deadline, request_id, reserved)

        for head, chain in self._chains.items():
            tasks[chain[-1]] = asyncio.create_task(run(head))
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
