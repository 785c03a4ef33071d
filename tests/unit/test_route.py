"""The forwarding route on the wire: what a step is asked to forward through and whose outputs an answer carries."""

from __future__ import annotations

import grpc
import pytest

from conveyor_runtime.errors import InvalidRequest
from conveyor_runtime.protocol import (
    FAILED_STEP_METADATA,
    ROUTE_PARAMETER,
    answered_by,
    failed_step,
    mark_answer,
    pb,
    route_of,
    set_route,
)


def test_route_round_trips_and_an_empty_route_sets_nothing() -> None:
    request = pb.ModelInferRequest()
    set_route(request, [])
    assert ROUTE_PARAMETER not in request.parameters and route_of(request) == []
    set_route(request, ["classify", "post-process"])
    assert route_of(pb.ModelInferRequest.FromString(request.SerializeToString())) == ["classify", "post-process"]


@pytest.mark.parametrize("text", ["a,,b", "A", "../x", "a b", "-a", "a-", ",", "x" * 5000])
def test_route_refuses_anything_but_step_names(text: str) -> None:
    request = pb.ModelInferRequest()
    request.parameters[ROUTE_PARAMETER].string_param = text
    with pytest.raises(InvalidRequest, match=ROUTE_PARAMETER):
        route_of(request)


def test_route_refuses_a_parameter_that_is_not_a_string() -> None:
    request = pb.ModelInferRequest()
    request.parameters[ROUTE_PARAMETER].bool_param = True
    with pytest.raises(InvalidRequest, match="must be a string"):
        route_of(request)


def test_answered_by_is_none_until_a_step_marks_its_answer() -> None:
    response = pb.ModelInferResponse()
    assert answered_by(response) is None
    mark_answer(response, "classify")
    assert answered_by(pb.ModelInferResponse.FromString(response.SerializeToString())) == "classify"


class _Failed(grpc.RpcError):
    def __init__(self, trailing: tuple[tuple[str, str | bytes], ...]) -> None:
        self._trailing = trailing

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing


def test_failed_step_reads_the_relay_mark_from_trailing_metadata() -> None:
    assert failed_step(_Failed(())) is None
    assert failed_step(_Failed((("other", "x"), (FAILED_STEP_METADATA, "postprocess")))) == "postprocess"
    assert failed_step(_Failed(((FAILED_STEP_METADATA, b"classify"),))) == "classify"
    assert failed_step(grpc.RpcError()) is None
