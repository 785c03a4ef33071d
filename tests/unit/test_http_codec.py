"""The REST codec: JSON and binary (Triton extension) inputs and outputs, and its error messages."""

from __future__ import annotations

import json
import math
from typing import Any

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
        ({"datatype": "INT8", "shape": [1], "data": [1000]}, "1000 is out of range for INT8"),
        ({"datatype": "FP32", "shape": [2**70], "data": [1.0]}, "too large"),
        ({"datatype": "FP32", "shape": [-1, -1], "data": [1.0]}, "negative dimension"),
        ({"datatype": "FP32", "shape": [2**33, 2**31], "data": [1.0]}, "too large"),
        ({"datatype": "FP32", "shape": [0, 2**62], "data": []}, "too large"),
        ({"datatype": "BYTES", "shape": [2], "data": [["a"], ["b", "c"]]}, "does not hold BYTES values"),
        # an integer used to become that many zero bytes: 90 bytes of JSON grew the gateway by 763 MB
        ({"datatype": "BYTES", "shape": [1], "data": [200_000_000]}, "BYTES.*strings"),
        ({"datatype": "BYTES", "shape": [1], "data": [None]}, "BYTES.*strings"),
        ({"datatype": "FP16", "shape": [1], "data": [1e300]}, "out of range for FP16"),
        ({"datatype": "FP32", "shape": [2], "data": [1.0, 1e300]}, "out of range for FP32"),
        ({"datatype": "FP32", "shape": [1], "data": ["many"]}, "does not hold FP32 values"),
        ({"datatype": "FP32", "shape": [1], "data": [True]}, "does not hold FP32 values"),
        ({"datatype": "INT32", "shape": [2], "data": [1, 1.5]}, "does not hold INT32 values.*integers"),
        ({"datatype": "UINT8", "shape": [1], "data": [-1]}, "out of range for UINT8"),
        ({"datatype": "UINT64", "shape": [1], "data": [2**64]}, "out of range for UINT64"),
        ({"datatype": "INT64", "shape": [1], "data": [-(10**30)]}, "out of range for INT64"),
        ({"datatype": "BOOL", "shape": [1], "data": [2]}, "does not hold BOOL values.*true or false"),
        ({"datatype": "FP32", "shape": [1], "data": 1.0}, "`data` must be a list"),
        ({"datatype": "BYTES", "shape": [1], "data": "abc"}, "`data` must be a list"),
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


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("INT8", [-128, 127]),
        ("UINT8", [0, 255]),
        ("INT64", [-(2**63), 2**63 - 1]),
        ("UINT64", [0, 2**64 - 1]),
        ("BOOL", [True, False]),
        ("FP16", [65504.0, -0.5]),
        ("FP64", [1e300, 5e-324]),
    ],
)
def test_http_json_data_at_the_edges_of_a_datatype_is_exact(datatype: str, values: list[object]) -> None:
    body, length = _body({"inputs": [{"name": "x", "datatype": datatype, "shape": [2], "data": values}]})
    inputs, _ = parse_infer_request(body, length)
    assert inputs["x"].to_numpy("x").tolist() == values


def test_http_binary_data_size_must_be_an_integer_not_a_bool() -> None:
    body, length = _body(
        {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "parameters": {"binary_data_size": True}}]}, b"\x01"
    )
    with pytest.raises(InvalidRequest, match="binary_data_size True"):
        parse_infer_request(body, length)


def _strict_json(text: bytes) -> Any:
    """Parse as RFC 8259 JSON: NaN and Infinity are not numbers there (Python's json accepts them by default)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not valid JSON")

    return json.loads(text, parse_constant=refuse)


NON_FINITE = [math.nan, math.inf, -math.inf, 1.5]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_http_non_finite_outputs_are_valid_json_that_tritonclient_reads_back(dtype: type[np.floating[Any]]) -> None:
    from tritonclient.http import InferResult

    values = np.array([NON_FINITE], dtype=dtype)
    body, headers = render_infer_response("m", {"y": WireTensor.from_numpy(values)}, {})
    assert headers["Content-Type"] == "application/json"
    assert _strict_json(body)["outputs"][0]["data"] == ["NaN", "Infinity", "-Infinity", 1.5]
    back = InferResult.from_response_body(body).as_numpy("y")
    assert back.dtype == dtype and back.shape == (1, 4)
    np.testing.assert_array_equal(back, values)  # NaN compares equal to NaN here


def test_http_non_finite_inputs_are_read_from_the_same_strings() -> None:
    body, length = _body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": ["NaN", "Infinity", "-Infinity", 1.5]}]})
    inputs, _ = parse_infer_request(body, length)
    np.testing.assert_array_equal(inputs["x"].to_numpy("x"), np.array(NON_FINITE, dtype=np.float32))
