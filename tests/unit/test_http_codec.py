"""The REST codec: JSON and binary (Triton extension) inputs and outputs, and its error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conveyor_runtime.errors import InvalidRequest
from conveyor_runtime.protocol import (
    RequestOptions,
    WireTensor,
    parse_infer_request,
    render_infer_response,
    request_options,
    serialize_bytes,
)


def _body(header: dict[str, object], binary: bytes = b"") -> tuple[bytes, int | None]:
    head = json.dumps(header).encode()
    return head + binary, (len(head) if binary else None)


def test_http_parses_json_data_of_every_kind() -> None:
    body, length = _body(
        {
            "inputs": [
                {"name": "a", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
                {"name": "b", "datatype": "BYTES", "shape": [2], "data": ["x", "yz"]},
                {"name": "c", "datatype": "BOOL", "shape": [1], "data": [True]},
            ]
        }
    )
    inputs, _ = parse_infer_request(body, length)
    np.testing.assert_array_equal(inputs["a"].to_numpy("a"), [[1, 2], [3, 4]])
    assert list(inputs["b"].to_numpy("b")) == [b"x", b"yz"]
    assert inputs["c"].datatype == "BOOL"


def test_http_parses_binary_inputs_in_order() -> None:
    floats = np.arange(6, dtype=np.float32).reshape(2, 3)
    strings = serialize_bytes(np.array([b"png", b"jpeg"], dtype=object))
    body, length = _body(
        {
            "inputs": [
                {"name": "f", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": floats.nbytes}},
                {"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(strings)}},
            ]
        },
        floats.tobytes() + strings,
    )
    inputs, _ = parse_infer_request(body, length)
    assert inputs["f"].raw == floats.tobytes()
    assert list(inputs["s"].to_numpy("s")) == [b"png", b"jpeg"]


@pytest.mark.parametrize(
    ("header", "binary", "message"),
    [
        ({"inputs": []}, b"", "non-empty `inputs`"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [2], "data": [1]}]}, b"", "holds 2 elements"),
        ({"inputs": [{"name": "a", "datatype": "FP99", "shape": [1], "data": [1]}]}, b"", "unknown datatype"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1]}]}, b"", "neither `data` nor"),
        (
            {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]},
            b"\x00" * 6,
            "not claimed",
        ),
        (
            {"inputs": [{"name": "a", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 4}}]},
            b"\x00" * 4,
            "needs 8 bytes",
        ),
    ],
)
def test_http_rejects_malformed_requests_with_a_reason(header: dict[str, object], binary: bytes, message: str) -> None:
    body, length = _body(header, binary)
    with pytest.raises(InvalidRequest, match=message):
        parse_infer_request(body, length)


def test_http_renders_binary_and_json_outputs_as_asked() -> None:
    outputs = {
        "scores": WireTensor.from_numpy(np.array([[0.5, 0.25]], dtype=np.float32)),
        "labels": WireTensor.from_numpy(np.array([[b"ok", b"dent"]], dtype=object)),
    }
    document = {"outputs": [{"name": "scores", "parameters": {"binary_data": True}}, {"name": "labels"}]}
    body, headers = render_infer_response("defects", outputs, document)
    length = int(headers["Inference-Header-Content-Length"])
    head = json.loads(body[:length])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert head["outputs"][1]["data"] == ["ok", "dent"]
    assert body[length:] == np.array([0.5, 0.25], dtype=np.float32).tobytes()

    body, headers = render_infer_response("defects", outputs, {})
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["outputs"][0]["data"] == [0.5, 0.25]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"datatype": "INT8", "shape": [1], "data": [1000]}, "does not hold INT8 values"),
        ({"datatype": "FP32", "shape": [2**70], "data": [1.0]}, "too large"),
        ({"datatype": "FP32", "shape": [-1, -1], "data": [1.0]}, "negative dimension"),
        ({"datatype": "FP32", "shape": [2**33, 2**31], "data": [1.0]}, "too large"),
        ({"datatype": "FP32", "shape": [0, 2**62], "data": []}, "too large"),
        ({"datatype": "BYTES", "shape": [2], "data": [["a"], ["b", "c"]]}, "does not hold BYTES values"),
    ],
)
def test_http_out_of_range_values_and_shapes_are_invalid(tensor: dict[str, object], message: str) -> None:
    body, length = _body({"inputs": [{"name": "x", **tensor}]})
    with pytest.raises(InvalidRequest, match=message):
        parse_infer_request(body, length)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"parameters": [1]}, "`parameters` must be an object"),
        ({"parameters": {"timeout": "soon"}}, "`parameters.timeout`"),
        ({"outputs": {"name": "y"}}, "`outputs` must be a list"),
        ({"outputs": [{"name": ["y"]}]}, r"outputs\[0\] needs a `name`"),
        ({"outputs": [{"name": "y", "parameters": "binary"}]}, r"outputs\[0\]\.parameters"),
        ({"id": {"a": 1}}, "`id` must be a string"),
    ],
)
def test_http_malformed_request_fields_are_invalid(header: dict[str, object], message: str) -> None:
    document = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}], **header}
    body, length = _body(document)
    with pytest.raises(InvalidRequest, match=message):
        parse_infer_request(body, length)


def test_http_input_parameters_must_be_an_object() -> None:
    body, length = _body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0], "parameters": [2]}]})
    with pytest.raises(InvalidRequest, match=r"`inputs\[0\]\.parameters` must be an object"):
        parse_infer_request(body, length)


def test_http_json_nested_too_deep_is_invalid() -> None:
    body = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        parse_infer_request(body, None)


def test_http_request_options_are_read_once_checked() -> None:
    body, length = _body(
        {
            "id": "r1",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
            "parameters": {"timeout": 2_000_000},
        }
    )
    _, document = parse_infer_request(body, length)
    assert request_options(document) == RequestOptions(request_id="r1", outputs=["y"], timeout_s=2.0)
