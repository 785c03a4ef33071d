"""Step-to-step forwarding on the wire: which steps a request still has to visit, and whose outputs an answer carries.

The gateway sends a chain's first step a request whose `conveyor_route` parameter lists the steps after it
(``"classify,postprocess"``). A step that can reach the next one calls it with its own outputs and the rest of the
route, and answers with whatever comes back; a step that cannot (no peers configured, an older image) answers with
its own outputs. Every answer names, in `conveyor_answered_by`, the step whose outputs it carries, so the gateway
goes on from the step after that one: forwarding is an optimisation that never changes a result.

A step that relays a later step's failure marks it with the `conveyor-failed-step` trailing metadata, so the caller
keeps the status and message as they are instead of retrying the relaying step or naming it as the culprit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import grpc

from ..errors import InvalidRequest
from .proto import open_inference_pb2 as pb

__all__ = [
    "ANSWERED_BY_PARAMETER",
    "FAILED_STEP_METADATA",
    "ROUTE_PARAMETER",
    "answered_by",
    "failed_step",
    "mark_answer",
    "route_of",
    "set_route",
]

ROUTE_PARAMETER = "conveyor_route"
ANSWERED_BY_PARAMETER = "conveyor_answered_by"
FAILED_STEP_METADATA = "conveyor-failed-step"

#: A step name as manifests allow it (a DNS-1035 label); anything else in a route is a malformed request.
_STEP_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
#: Longer routes than any pipeline has steps are refused before they are parsed.
MAX_ROUTE_CHARS = 4096


def set_route(request: pb.ModelInferRequest, steps: Sequence[str]) -> None:
    """Ask the step that receives `request` to forward its outputs through `steps`, in order."""
    if steps:
        request.parameters[ROUTE_PARAMETER].string_param = ",".join(steps)


def route_of(request: pb.ModelInferRequest) -> list[str]:
    """The steps a received request is to be forwarded through ([] for none); INVALID_ARGUMENT when malformed."""
    if ROUTE_PARAMETER not in request.parameters:
        return []
    parameter = request.parameters[ROUTE_PARAMETER]
    if parameter.WhichOneof("parameter_choice") != "string_param":
        raise InvalidRequest(f"parameter {ROUTE_PARAMETER!r} must be a string of step names separated by commas")
    text = parameter.string_param
    if len(text) > MAX_ROUTE_CHARS:
        raise InvalidRequest(f"parameter {ROUTE_PARAMETER!r} is {len(text)} characters, over {MAX_ROUTE_CHARS}")
    steps = text.split(",") if text else []
    for step in steps:
        if not _STEP_NAME.fullmatch(step):
            raise InvalidRequest(f"parameter {ROUTE_PARAMETER!r}: {step!r} is not a step name")
    return steps


def mark_answer(response: pb.ModelInferResponse, step: str) -> None:
    """Say that `response` carries the outputs of `step`."""
    response.parameters[ANSWERED_BY_PARAMETER].string_param = step


def answered_by(response: pb.ModelInferResponse) -> str | None:
    """The step whose outputs `response` carries, or None when the step did not say (it forwards nothing)."""
    if ANSWERED_BY_PARAMETER not in response.parameters:
        return None
    return response.parameters[ANSWERED_BY_PARAMETER].string_param or None


def failed_step(error: grpc.RpcError) -> str | None:
    """The later step that `error` was relayed from, or None when the called step failed itself."""
    trailing = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None
    for key, value in trailing or ():
        if key == FAILED_STEP_METADATA:
            return value if isinstance(value, str) else value.decode()
    return None
