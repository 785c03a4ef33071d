"""Tensors between numpy and the Open Inference Protocol: datatypes, raw bytes and typed contents, both directions.

Decoding checks everything a client can get wrong (datatype, shape, byte length, contents count) and raises
`InvalidRequest` naming the input, so a bad request fails alone before it joins a batch.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidRequest
from .proto import open_inference_pb2 as pb

__all__ = [
    "DATATYPES",
    "MAX_TENSOR_SPAN",
    "InferMessage",
    "add_raw_tensor",
    "checked_integers",
    "checked_shape",
    "datatype_of",
    "decode_tensor",
    "decode_tensors",
    "deserialize_bytes",
    "dtype_of",
    "encode_tensor",
    "encode_tensors",
    "serialize_bytes",
    "tensor_entries",
]

#: The two messages that carry tensors: a request's inputs and a response's outputs.
InferMessage = pb.ModelInferRequest | pb.ModelInferResponse

#: Open Inference Protocol datatype -> numpy dtype (BYTES holds Python bytes objects).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_BY_DTYPE = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}

#: Which `InferTensorContents` field carries each datatype when a client sends typed contents.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def datatype_of(array: npt.NDArray[Any]) -> str:
    """The protocol datatype of a numpy array (object and bytes/str arrays are BYTES)."""
    if array.dtype.kind in {"O", "S", "U"}:
        return "BYTES"
    try:
        return _BY_DTYPE[array.dtype]
    except KeyError:
        raise InvalidRequest(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype") from None


def dtype_of(datatype: str, *, name: str = "") -> np.dtype[Any]:
    """The numpy dtype for a protocol datatype; raises InvalidRequest naming the tensor."""
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise InvalidRequest(
            f"input {name!r}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        ) from None


def serialize_bytes(array: npt.NDArray[Any]) -> bytes:
    """BYTES elements in row-major order, each as a 4-byte little-endian length then the bytes."""
    parts = []
    for item in array.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(raw: bytes, count: int, *, name: str = "") -> npt.NDArray[Any]:
    """Inverse of `serialize_bytes`; checks that exactly `count` elements fill `raw`."""
    items: list[bytes] = []
    view = memoryview(raw)
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidRequest(f"input {name!r}: BYTES data ends inside a length prefix")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidRequest(f"input {name!r}: BYTES element {len(items)} claims {length} bytes past the end")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidRequest(f"input {name!r}: shape holds {count} BYTES elements but the data has {len(items)}")
    result = np.empty(count, dtype=object)
    result[:] = items
    return result


#: No tensor may span more bytes than this, counting only its non-zero dimensions (numpy's own limit is 2**63).
MAX_TENSOR_SPAN = 2**62


def checked_shape(name: str, shape: Sequence[int], dtype: np.dtype[Any]) -> tuple[tuple[int, ...], int]:
    """(dims, element count) of a client's shape, counted exactly (no int64 wrap-around); raises InvalidRequest
    for a negative dimension or a shape no array could have."""
    dims = tuple(int(d) for d in shape)
    if any(dim < 0 for dim in dims):
        raise InvalidRequest(f"input {name!r}: shape {list(dims)} has a negative dimension")
    if math.prod(d for d in dims if d) * max(dtype.itemsize, 1) > MAX_TENSOR_SPAN:
        raise InvalidRequest(f"input {name!r}: shape {list(dims)} is too large for any tensor")
    return dims, math.prod(dims)


def checked_integers(name: str, datatype: str, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Integers (any integer or object dtype) as `datatype`'s dtype; raises InvalidRequest for a value out of its
    range instead of letting numpy wrap it (1000 as UINT8 is 232)."""
    dtype = DATATYPES[datatype]
    info = np.iinfo(dtype)
    if values.size:
        low, high = int(values.min()), int(values.max())
        for value in (low, high):
            if not info.min <= value <= info.max:
                raise InvalidRequest(f"input {name!r}: value {value} is out of range for {datatype} ({info.min}..{info.max})")
    return values.astype(dtype)


def _typed_values(name: str, datatype: str, values: Any) -> npt.NDArray[Any]:
    if datatype == "BYTES":
        result = np.empty(len(values), dtype=object)
        result[:] = list(values)
        return result
    dtype = DATATYPES[datatype]
    if dtype.kind in "iu" and dtype.itemsize < 4:  # the contents fields are 32 or 64 bits wide
        return checked_integers(name, datatype, np.asarray(values, dtype=np.int64))
    return np.asarray(values, dtype=dtype)


def decode_tensor(name: str, datatype: str, shape: Sequence[int], raw: bytes | None, contents: Any = None) -> npt.NDArray[Any]:
    """One tensor from raw bytes (preferred) or typed contents, checked against its shape and datatype."""
    dtype = dtype_of(datatype, name=name)
    dims, count = checked_shape(name, shape, dtype)
    if raw is not None:
        if datatype == "BYTES":
            return deserialize_bytes(raw, count, name=name).reshape(dims)
        expected = count * dtype.itemsize
        if len(raw) != expected:
            raise InvalidRequest(
                f"input {name!r}: {datatype} shape {list(dims)} needs {expected} bytes of raw data, got {len(raw)}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(dims)
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidRequest(f"input {name!r}: {datatype} must be sent as raw_input_contents")
    if contents is not None:
        for descriptor, _ in contents.ListFields():
            if descriptor.name != field:
                raise InvalidRequest(f"input {name!r}: {descriptor.name} cannot carry {datatype}; send its values in {field}")
    values = getattr(contents, field) if contents is not None else []
    if len(values) != count:
        raise InvalidRequest(f"input {name!r}: shape {list(dims)} holds {count} elements but {field} has {len(values)}")
    return _typed_values(name, datatype, values).reshape(dims)


def _fields(message: InferMessage) -> tuple[Any, Any]:
    """(tensor metadata, raw contents) of a request (its inputs) or a response (its outputs)."""
    if isinstance(message, pb.ModelInferRequest):
        return message.inputs, message.raw_input_contents
    return message.outputs, message.raw_output_contents


def tensor_entries(message: InferMessage) -> Iterator[tuple[str, str, Sequence[int], bytes | None, Any]]:
    """Each tensor of a request or response as (name, datatype, shape, raw or None, contents or None).

    Checks what spans tensors: raw contents, when used, cover every tensor; names are present and unique.
    """
    tensors, raw = _fields(message)
    if raw and len(raw) != len(tensors):
        what, kind = ("request", "input") if isinstance(message, pb.ModelInferRequest) else ("response", "output")
        raise InvalidRequest(
            f"{what} has {len(tensors)} {kind}s but {len(raw)} raw_{kind}_contents; send one per {kind}"
        )
    seen: set[str] = set()
    for index, tensor in enumerate(tensors):
        if not tensor.name:
            raise InvalidRequest(f"input #{index} has no name")
        if tensor.name in seen:
            raise InvalidRequest(f"input {tensor.name!r} is given more than once")
        seen.add(tensor.name)
        contents = tensor.contents if tensor.HasField("contents") else None
        if raw and contents is not None and contents.ByteSize():
            raise InvalidRequest(f"input {tensor.name!r} has both raw and typed contents; send one of them")
        yield tensor.name, tensor.datatype, tensor.shape, raw[index] if raw else None, contents


def decode_tensors(message: InferMessage) -> dict[str, npt.NDArray[Any]]:
    """Every tensor of a request (its inputs) or a response (its outputs) by name, decoded and checked."""
    return {name: decode_tensor(name, *fields) for name, *fields in tensor_entries(message)}


def encode_tensor(array: npt.NDArray[Any]) -> tuple[str, list[int], bytes]:
    """(datatype, shape, raw bytes) of a numpy array."""
    datatype = datatype_of(array)
    if datatype == "BYTES":
        return datatype, list(array.shape), serialize_bytes(array)
    return datatype, list(array.shape), np.ascontiguousarray(array).tobytes()


def add_raw_tensor(message: InferMessage, name: str, datatype: str, shape: Sequence[int], raw: bytes) -> None:
    """Append one tensor as raw contents to a request (an input) or a response (an output)."""
    tensors, raws = _fields(message)
    tensors.add(name=name, datatype=datatype, shape=shape)
    raws.append(raw)


def encode_tensors(message: InferMessage, arrays: Iterable[tuple[str, npt.NDArray[Any]]]) -> None:
    """Append numpy arrays as raw contents: a request's inputs or a response's outputs."""
    for name, array in arrays:
        add_raw_tensor(message, name, *encode_tensor(array))
