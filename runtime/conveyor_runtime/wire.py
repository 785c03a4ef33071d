"""Tensors as they travel through the gateway: raw bytes, checked once on the way in, then passed through.

Between steps nothing is converted to numpy, JSON or pickle; only typed `contents` are turned into raw bytes once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .proto import open_inference_pb2 as pb
from .tensors import decode_tensor, encode_tensor, request_tensors
from .errors import InvalidRequest

__all__ = ["WireTensor", "checked_tensor", "tensors_from_request", "tensors_from_response", "build_request"]


@dataclass(frozen=True, slots=True)
class WireTensor:
    """A tensor as it travels: protocol datatype, shape and raw bytes (BYTES elements length-prefixed)."""

    datatype: str
    shape: tuple[int, ...]
    raw: bytes

    @classmethod
    def from_numpy(cls, array: npt.NDArray[Any]) -> WireTensor:
        datatype, shape, raw = encode_tensor(np.asarray(array))
        return cls(datatype, tuple(shape), raw)

    def to_numpy(self, name: str = "") -> npt.NDArray[Any]:
        return decode_tensor(name, self.datatype, self.shape, self.raw)


def checked_tensor(name: str, datatype: str, shape: Sequence[int], raw: bytes | None, contents: Any) -> WireTensor:
    """Validate one incoming tensor; raw data passes through untouched, typed contents become raw bytes."""
    array = decode_tensor(name, datatype, shape, raw, contents)
    if raw is not None:
        return WireTensor(datatype, tuple(int(d) for d in shape), raw)
    return WireTensor(datatype, tuple(int(d) for d in shape), encode_tensor(array)[2])


def tensors_from_request(request: pb.ModelInferRequest) -> dict[str, WireTensor]:
    """The request's inputs, validated (INVALID_ARGUMENT with a reason when malformed)."""
    if not request.inputs:
        raise InvalidRequest("request has no inputs")
    return {name: checked_tensor(name, *fields) for name, *fields in request_tensors(request)}


def tensors_from_response(response: pb.ModelInferResponse) -> dict[str, WireTensor]:
    """A step's outputs as raw tensors (typed contents, if a step used them, are converted once)."""
    raw = response.raw_output_contents
    result: dict[str, WireTensor] = {}
    for index, tensor in enumerate(response.outputs):
        if raw:
            result[tensor.name] = WireTensor(tensor.datatype, tuple(tensor.shape), raw[index])
        else:
            result[tensor.name] = checked_tensor(
                tensor.name, tensor.datatype, tensor.shape, None, tensor.contents if tensor.HasField("contents") else None
            )
    return result


def build_request(model: str, tensors: Mapping[str, WireTensor], request_id: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    for name, tensor in tensors.items():
        request.inputs.add(name=name, datatype=tensor.datatype, shape=tensor.shape)
        request.raw_input_contents.append(tensor.raw)
    return request
