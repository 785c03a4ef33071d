"""The call stream's message conventions (`protocol.call_stream`) and the setting that turns it off."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from conveyor_runtime.errors import UsageError
from conveyor_runtime.protocol import encode_tensors, pb
from conveyor_runtime.protocol.call_stream import (
    call_id_of,
    cancel_message,
    failure_answer,
    failure_of,
    fits_stream,
    is_cancel,
    tag_answer,
    tag_call,
    timeout_of,
    untag_call,
)
from conveyor_runtime.routing import call_streams_wanted


def _request(values: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="s")
    encode_tensors(request, [("x", np.zeros(values, np.float32))])
    return request


def test_a_tagged_request_carries_its_call_and_timeout_and_untagging_restores_it() -> None:
    request = _request(4)
    request.parameters["other"].string_param = "kept"
    before = request.SerializeToString(deterministic=True)
    tag_call(request, 7, 2.5)
    assert (call_id_of(request), timeout_of(request), is_cancel(request)) == (7, 2.5, False)
    untag_call(request)
    assert request.SerializeToString(deterministic=True) == before
    assert (call_id_of(request), timeout_of(request)) == (0, None)


def test_a_cancel_message_names_its_call_and_nothing_else() -> None:
    message = cancel_message(42)
    assert is_cancel(message) and call_id_of(message) == 42 and not message.inputs


def test_a_failure_answer_round_trips_its_status_reason_and_relayed_step() -> None:
    answer = pb.ModelInferResponse.FromString(
        failure_answer(3, grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", "classify").SerializeToString()
    )
    failure = failure_of(answer)
    assert failure is not None and call_id_of(answer) == 3
    assert (failure.code, failure.details, failure.failed_step) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", "classify")
    assert failure.trailing() == (("conveyor-failed-step", "classify"),)
    outputs = pb.ModelInferResponse(model_name="s")
    tag_answer(outputs, 3)
    assert failure_of(outputs) is None and call_id_of(outputs) == 3


def test_only_small_requests_fit_the_stream() -> None:
    assert fits_stream(_request(16), limit=64)
    assert not fits_stream(_request(17), limit=64)
    typed = pb.ModelInferRequest(model_name="s")  # typed contents (no raw bytes) count by the message's size
    typed.inputs.add(name="x", datatype="FP32", shape=[100]).contents.fp32_contents.extend([0.0] * 100)
    assert not fits_stream(typed, limit=64) and fits_stream(typed, limit=1024)


@pytest.mark.parametrize(("value", "wanted"), [(None, True), ("", True), ("stream", True), (" Unary ", False)])
def test_step_calls_setting(value: str | None, wanted: bool) -> None:
    environ = {} if value is None else {"CONVEYOR_STEP_CALLS": value}
    assert call_streams_wanted(environ) is wanted


def test_an_unknown_step_calls_setting_is_refused_naming_the_choices() -> None:
    with pytest.raises(UsageError, match="CONVEYOR_STEP_CALLS='grpc': expected one of stream, unary"):
        call_streams_wanted({"CONVEYOR_STEP_CALLS": "grpc"})
