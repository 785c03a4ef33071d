"""Tensors as they travel through the gateway: raw bytes, checked once on the way in, then passed through.

Between steps nothing is converted to numpy, JSON or pickle; only typed `contents` are turned into raw bytes once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidRequest
from .proto import open_inference_pb2 as pb
from .tensors import InferMessage, add_raw_tensor, decode_tensor, encode_tensor, tensor_entries

__all__ = ["WireTensor", "add_wire_tensors", "checked_tensor", "wire_request", "wire_tensors"]


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


def wire_tensors(message: InferMessage, *, trusted: bool = False) -> dict[str, WireTensor]:
    """A message's tensors as raw tensors: a client's request is checked (INVALID_ARGUMENT with a reason when
    malformed); a step's response (`trusted`) passes its raw contents through unchecked."""
    if isinstance(message, pb.ModelInferRequest) and not message.inputs:
        raise InvalidRequest("request has no inputs")
    result: dict[str, WireTensor] = {}
    for name, datatype, shape, raw, contents in tensor_entries(message):
        if trusted and raw is not None:
            result[name] = WireTensor(datatype, tuple(shape), raw)
        else:
            result[name] = checked_tensor(name, datatype, shape, raw, contents)
    return result


def add_wire_tensors(message: InferMessage, tensors: Mapping[str, WireTensor]) -> None:
    """Append raw tensors to a request (its inputs) or a response (its outputs)."""
    for name, tensor in tensors.items():
        add_raw_tensor(message, name, tensor.datatype, tensor.shape, tensor.raw)


def wire_request(model: str, tensors: Mapping[str, WireTensor], request_id: str = "") -> pb.ModelInferRequest:
    """A ModelInferRequest for `model` carrying `tensors` as raw inputs."""
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    add_wire_tensors(request, tensors)
    return request
