"""Step-to-step forwarding: a step sends its outputs straight to the next step of its request's route.

The next step is called the way the gateway calls steps (`routing.Balancer`: least outstanding requests over its
ready replicas, retries on UNAVAILABLE or a full queue, the request's own deadline), and its answer, the outputs
of the route's last step, becomes this step's answer. Where the next step's replicas are comes from `peers`: fixed
addresses (`conveyor run`) or the step's headless Service in the pipeline's namespace (pods). A step that knows no
way to a peer answers with its own outputs, and the caller carries on from there (see `protocol.route`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter

from ..errors import RequestError, StepCallError
from ..protocol import pb, set_route, wire_request, wire_tensors
from ..routing import Balancer, DnsEndpoints, EndpointSource, InputNames, StaticEndpoints, call_streams_wanted
from ..spec import STEP_GRPC_PORT, route_inputs, step_resource_name

__all__ = ["Forwarder", "PeerSources", "peer_sources"]

log = logging.getLogger(__name__)

#: Where a peer step's replicas are, by its name; None when this step cannot reach it.
PeerSources = Callable[[str], EndpointSource | None]


def peer_sources(
    static: Mapping[str, Sequence[str]] | None = None, *, pipeline: str | None = None, port: int = STEP_GRPC_PORT
) -> PeerSources:
    """Peers at the `static` addresses, else (given the pipeline's name) at their headless Service's DNS name."""
    fixed = {step: list(addresses) for step, addresses in (static or {}).items()}

    def source(step: str) -> EndpointSource | None:
        if step in fixed:
            return StaticEndpoints(fixed[step])
        if pipeline:
            return DnsEndpoints(step_resource_name(pipeline, step), port)
        return None

    return source


class Forwarder:
    """Calls the next step of a route with this step's outputs; one balancer per peer, made at its first use."""

    def __init__(self, step: str, sources: PeerSources, registry: CollectorRegistry, *, default_timeout_s: float) -> None:
        self.step = step
        self._sources = sources
        self._default_timeout_s = default_timeout_s
        self._call_streams = call_streams_wanted()  # read now: a bad setting stops the step at its start
        self._balancers: dict[str, Balancer | None] = {}
        self._input_names = InputNames()
        self._forwarded = Counter(
            "conveyor_step_forwarded",
            "Requests this step forwarded to the next step of their route, by that step and the answer's status",
            ["step", "to", "code"],
            registry=registry,
        )

    async def _balancer(self, step: str) -> Balancer | None:
        if step not in self._balancers:
            source = self._sources(step)
            balancer = None
            if source is not None:
                balancer = Balancer(step, source, default_timeout_s=self._default_timeout_s, call_streams=self._call_streams)
                await balancer.start()
                log.info("step %s forwards to step %s at %s", self.step, step, source.describe())
            self._balancers[step] = balancer
        return self._balancers[step]

    async def can_reach(self, step: str) -> bool:
        """Whether this step knows where `step`'s replicas are."""
        return await self._balancer(step) is not None

    async def forward(
        self,
        response: pb.ModelInferResponse,
        route: Sequence[str],
        request_id: str,
        deadline: float | None,
        *,
        sender: str | None = None,
    ) -> pb.ModelInferResponse:
        """Send the outputs (`response`) of `sender` (default: this step; else one running in its process) to
        ``route[0]``, asking it to go on through ``route[1:]``.

        Failures are raised as `StepCallError`s naming the step that failed (see `protocol.route`).
        """
        sender = sender or self.step
        target, rest = route[0], route[1:]
        balancer = await self._balancer(target)
        assert balancer is not None, "call can_reach first"
        code = "OK"
        try:
            expected = await self._input_names.of(balancer, deadline)
            tensors = route_inputs(target, [(sender, wire_tensors(response, trusted=True))], expected)
            request = wire_request(target, tensors, request_id)
            set_route(request, rest)
            return await balancer.infer(request, deadline)
        except StepCallError as exc:
            code = exc.status
            raise
        except RequestError as exc:  # no replica ready, the deadline passed: words that already name the step
            code = exc.status
            raise StepCallError(target, exc.status, exc.message, relayed=True) from None
        finally:
            self._forwarded.labels(sender, target, code).inc()

    async def aclose(self) -> None:
        for balancer in self._balancers.values():
            if balancer is not None:
                await balancer.aclose()
        self._balancers.clear()
