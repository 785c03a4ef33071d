"""The numpy <-> Open Inference Protocol codec: round trips and the checks that make bad input fail alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conveyor_runtime.errors import InvalidRequest
from conveyor_runtime.protocol import (
    decode_tensor,
    decode_tensors,
    deserialize_bytes,
    encode_tensors,
    pb,
    serialize_bytes,
)

numeric = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_]),
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
)


@given(numeric)
def test_tensors_raw_round_trip(array: np.ndarray[Any, Any]) -> None:
    request = pb.ModelInferRequest()
    encode_tensors(request, [("x", array)])
    decoded = decode_tensors(pb.ModelInferRequest.FromString(request.SerializeToString()))["x"]
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


@given(st.lists(st.binary(max_size=20), max_size=8))
def test_tensors_bytes_round_trip(items: list[bytes]) -> None:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    response = pb.ModelInferResponse()
    encode_tensors(response, [("b", array)])
    decoded = decode_tensors(response)["b"]
    assert list(decoded) == items
    assert list(deserialize_bytes(serialize_bytes(array), len(items))) == items


def test_tensors_typed_contents_are_accepted() -> None:
    contents = pb.InferTensorContents(fp32_contents=[1.0, 2.0, 3.0, 4.0])
    array = decode_tensor("x", "FP32", [2, 2], None, contents)
    np.testing.assert_array_equal(array, [[1, 2], [3, 4]])
    assert array.dtype == np.float32


@pytest.mark.parametrize(
    ("datatype", "shape", "raw", "message"),
    [
        ("FP32", [2, 2], b"\0" * 12, "needs 16 bytes of raw data, got 12"),
        ("FP33", [1], b"\0" * 4, "unknown datatype 'FP33'"),
        ("FP32", [-1, 2], b"", "negative dimension"),
        ("BYTES", [2], b"\x01\0\0\0a", "shape holds 2 BYTES elements but the data has 1"),
    ],
)
def test_tensors_bad_input_names_the_input(datatype: str, shape: list[int], raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as info:
        decode_tensor("pixels", datatype, shape, raw)
    assert "'pixels'" in str(info.value)
    assert info.value.status == "INVALID_ARGUMENT"


def test_tensors_raw_contents_must_cover_every_input() -> None:
    request = pb.ModelInferRequest()
    encode_tensors(request, [("a", np.zeros(2, np.float32)), ("b", np.zeros(2, np.float32))])
    del request.raw_input_contents[1]
    with pytest.raises(InvalidRequest, match="2 inputs but 1 raw_input_contents"):
        decode_tensors(request)


@pytest.mark.parametrize("shape", [[2**33, 2**31], [0, 2**62], [2**62, 4]])
def test_tensors_shape_whose_element_count_overflows_int64_is_invalid(shape: list[int]) -> None:
    # the int64 product wraps to 0, so empty data used to "match" and reshape failed as INTERNAL
    for raw, contents in ((b"", None), (b"\0" * 8, None), (None, pb.InferTensorContents()), (None, None)):
        with pytest.raises(InvalidRequest, match="'big'") as info:
            decode_tensor("big", "FP32", shape, raw, contents)
        assert info.value.status == "INVALID_ARGUMENT"


def test_tensors_raw_and_typed_contents_together_are_invalid() -> None:
    request = pb.ModelInferRequest()
    encode_tensors(request, [("a", np.zeros(2, np.float32))])
    request.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    with pytest.raises(InvalidRequest, match="'a'.*both raw and typed contents"):
        decode_tensors(request)


@pytest.mark.parametrize(
    ("datatype", "field", "value"),
    [("UINT8", "uint_contents", 256), ("UINT16", "uint_contents", 65536), ("INT8", "int_contents", -129), ("INT16", "int_contents", 40000)],
)
def test_tensors_typed_contents_out_of_the_datatypes_range_are_invalid(datatype: str, field: str, value: int) -> None:
    # the 32-bit contents fields used to wrap silently into the narrower type (UINT8 1000 became 232)
    contents = pb.InferTensorContents(**{field: [1, value]})
    with pytest.raises(InvalidRequest, match=f"'x'.*{value}.*out of range for {datatype}"):
        decode_tensor("x", datatype, [2], None, contents)


@pytest.mark.parametrize(
    ("datatype", "field", "values"),
    [("UINT8", "uint_contents", [0, 255]), ("INT8", "int_contents", [-128, 127]), ("INT16", "int_contents", [-32768, 32767])],
)
def test_tensors_typed_contents_at_the_edges_of_the_datatype_are_exact(datatype: str, field: str, values: list[int]) -> None:
    array = decode_tensor("x", datatype, [2], None, pb.InferTensorContents(**{field: values}))
    assert array.tolist() == values


@pytest.mark.parametrize(("datatype", "field"), [("FP32", "fp64_contents"), ("BOOL", "int_contents"), ("INT64", "uint64_contents")])
def test_tensors_typed_contents_in_a_field_of_another_datatype_are_invalid(datatype: str, field: str) -> None:
    # they used to be ignored silently: with the right field empty, a [0]-shaped tensor "matched"
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype=datatype, shape=[0]).contents.MergeFrom(pb.InferTensorContents(**{field: [1]}))
    with pytest.raises(InvalidRequest, match=f"'x'.*{field}.*{datatype}"):
        decode_tensors(request)

