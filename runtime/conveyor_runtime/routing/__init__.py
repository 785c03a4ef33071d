"""Calling a step's replicas: where they are (`endpoints`), which one takes a call and what is retried (`balancer`),
and the input names a step expects (`inputs`); `StepClient` is what a caller needs of any of them. The gateway and a
forwarding step both call steps through it.
"""

from .balancer import CHANNEL_OPTIONS, DEFAULT_TIMEOUT_S, STEP_CALLS_ENV, TOO_LARGE_DETAILS, Balancer, call_streams_wanted
from .call_stream import CallStream
from .endpoints import DnsEndpoints, EndpointSource, StaticEndpoints, parse_endpoints, watch_endpoints
from .inputs import InputNames
from .limit import LearnedLimit
from .replica import Replica
from .step_client import StepClient

__all__ = [
    "CHANNEL_OPTIONS",
    "DEFAULT_TIMEOUT_S",
    "STEP_CALLS_ENV",
    "TOO_LARGE_DETAILS",
    "Balancer",
    "CallStream",
    "DnsEndpoints",
    "EndpointSource",
    "InputNames",
    "LearnedLimit",
    "Replica",
    "StaticEndpoints",
    "StepClient",
    "call_streams_wanted",
    "parse_endpoints",
    "watch_endpoints",
]
