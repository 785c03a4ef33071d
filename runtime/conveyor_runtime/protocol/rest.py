"""The Open Inference Protocol's REST codec (v2 JSON) with Triton's binary tensor data extension.

A request body is a JSON header, optionally followed by raw tensor bytes when the `Inference-Header-Content-Length`
header gives the JSON's length; inputs carry either JSON `data` or a `binary_data_size` parameter. Pure functions:
the HTTP server lives with the gateway.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidRequest
from .model_service import MODEL_VERSION
from .tensors import DATATYPES, checked_integers, checked_shape, dtype_of
from .wire import WireTensor, checked_tensor

__all__ = ["HEADER_LENGTH", "RequestOptions", "parse_infer_request", "render_infer_response", "request_options"]

HEADER_LENGTH = "Inference-Header-Content-Length"


#: How JSON writes the floats it has no numbers for (RFC 8259 has none): the strings of protobuf's JSON mapping, which
#: numpy (and so `tritonclient.http`'s `as_numpy`) reads back. Requests may use them too.
NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _json_values(name: str, datatype: str, data: list[Any]) -> npt.NDArray[Any]:
    """JSON `data` as `datatype`'s dtype, never converted lossily: integers in range for integer types, true/false
    for BOOL, numbers (or the strings of NON_FINITE) in range for floats, strings for BYTES."""
    if datatype == "BYTES":
        flat = np.asarray(data, dtype=object).reshape(-1)
        if not all(isinstance(item, str) for item in flat):
            raise TypeError("BYTES `data` must be a list of strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = [item.encode() for item in flat]
        return array
    values = np.asarray(data).reshape(-1)  # inferred: bool, int64/uint64, float64, str, or object (huge ints, junk)
    kind = values.dtype.kind if values.size else "empty"
    dtype = DATATYPES[datatype]
    if datatype == "BOOL":
        if kind not in {"b", "empty"}:
            raise TypeError("BOOL `data` must hold true or false")
        return values.astype(dtype)
    if dtype.kind in "iu":
        if kind in {"f", "O"}:  # floats, or ints beyond int64 mixed with others (numpy then infers float64): look closer
            values = np.asarray(data, dtype=object).reshape(-1)
            if not all(type(item) is int for item in values):
                raise TypeError(f"{datatype} `data` must hold integers")
        elif kind not in {"i", "u", "empty"}:
            raise TypeError(f"{datatype} `data` must hold integers")
        return checked_integers(name, datatype, values)
    if kind not in {"i", "u", "f", "U", "O", "empty"}:
        raise TypeError(f"{datatype} `data` must hold numbers")
    with np.errstate(over="raise"):
        try:
            return values.astype(np.float64).astype(dtype)
        except FloatingPointError:
            raise InvalidRequest(f"input {name!r}: a value is out of range for {datatype}") from None


def _json_tensor(name: str, datatype: str, shape: list[int], data: Any) -> WireTensor:
    dtype = dtype_of(datatype, name=name)
    dims, count = checked_shape(name, shape, dtype)
    if not isinstance(data, list):
        raise InvalidRequest(f"input {name!r}: `data` must be a list, got {type(data).__name__}")
    try:
        array = _json_values(name, datatype, data)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: a huge int where a float is wanted
        raise InvalidRequest(f"input {name!r}: `data` does not hold {datatype} values: {exc}") from None
    if array.size != count:
        raise InvalidRequest(f"input {name!r}: shape {shape} holds {count} elements but `data` has {array.size}")
    return WireTensor.from_numpy(array.reshape(dims))


def _shape(name: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise InvalidRequest(f"input {name!r}: `shape` must be a list of integers, got {value!r}")
    return list(value)


@dataclass(frozen=True)
class RequestOptions:
    """What a checked request asks besides its inputs: its id, the outputs it wants, its timeout (None: none)."""

    request_id: str
    outputs: list[str]
    timeout_s: float | None


def _parameters(value: Any, where: str) -> dict[str, Any]:
    """A `parameters` member: absent or an object."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"`{where}parameters` must be an object, got {type(value).__name__}")
    return value


def _check_document(document: dict[str, Any]) -> None:
    """The request-level members that the inputs' loop does not read: `id`, `parameters` and `outputs`."""
    if not isinstance(document.get("id", ""), str):
        raise InvalidRequest("`id` must be a string")
    timeout = _parameters(document.get("parameters"), "").get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 0):
        raise InvalidRequest(f"`parameters.timeout` must be a number of microseconds >= 0, got {timeout!r}")
    outputs = document.get("outputs", [])
    if not isinstance(outputs, list):
        raise InvalidRequest("`outputs` must be a list of objects with a `name`")
    for index, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str) or not output["name"]:
            raise InvalidRequest(f"outputs[{index}] needs a `name` (a string)")
        _parameters(output.get("parameters"), f"outputs[{index}].")


def request_options(document: dict[str, Any]) -> RequestOptions:
    """The options of a request that `parse_infer_request` has checked."""
    timeout = (document.get("parameters") or {}).get("timeout")
    return RequestOptions(
        request_id=str(document.get("id") or ""),
        outputs=[output["name"] for output in document.get("outputs") or []],
        timeout_s=timeout / 1e6 if timeout else None,
    )


def parse_infer_request(body: bytes, header_length: int | None) -> tuple[dict[str, WireTensor], dict[str, Any]]:
    """(inputs, JSON header) of an HTTP infer request; raises InvalidRequest saying what is wrong."""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise InvalidRequest(f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes")
        head, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        head, binary = body, memoryview(b"")
    try:
        document = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("request body is not valid JSON for this server: nested too deep") from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list) or not document["inputs"]:
        raise InvalidRequest("request JSON must be an object with a non-empty `inputs` list")
    _check_document(document)
    inputs: dict[str, WireTensor] = {}
    offset = 0
    for index, spec in enumerate(document["inputs"]):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise InvalidRequest(f"inputs[{index}] needs a `name`")
        name = spec["name"]
        if name in inputs:
            raise InvalidRequest(f"input {name!r} is given more than once")
        datatype = spec.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidRequest(f"input {name!r} needs a `datatype`")
        shape = _shape(name, spec.get("shape"))
        size = _parameters(spec.get("parameters"), f"inputs[{index}].").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise InvalidRequest(
                    f"input {name!r}: binary_data_size {size!r} runs past the {len(binary)} bytes of binary data"
                )
            inputs[name] = checked_tensor(name, datatype, shape, bytes(binary[offset : offset + size]), None)
            offset += size
        elif "data" in spec:
            inputs[name] = _json_tensor(name, datatype, shape, spec["data"])
        else:
            raise InvalidRequest(f"input {name!r} has neither `data` nor a `binary_data_size` parameter")
    if offset != len(binary):
        raise InvalidRequest(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    return inputs, document


def _json_data(name: str, tensor: WireTensor) -> list[Any]:
    array = tensor.to_numpy(name).reshape(-1)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        return [NON_FINITE.get(str(value), value) for value in array.tolist()]
    if tensor.datatype != "BYTES":
        return list(array.tolist())
    try:
        return [bytes(item).decode() for item in array]
    except UnicodeDecodeError:
        raise InvalidRequest(f"output {name!r} is not UTF-8 text; request it with binary_data=true") from None


def render_infer_response(
    model: str, outputs: dict[str, WireTensor], document: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) answering `document` (checked by `parse_infer_request`): each output binary or JSON as
    its request asked."""
    binary_default = bool((document.get("parameters") or {}).get("binary_data_output", False))
    per_output = {
        o["name"]: (o.get("parameters") or {}).get("binary_data", binary_default) for o in document.get("outputs") or []
    }
    entries = []
    chunks: list[bytes] = []
    for name, tensor in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if per_output.get(name, binary_default):
            entry["parameters"] = {"binary_data_size": len(tensor.raw)}
            chunks.append(tensor.raw)
        else:
            entry["data"] = _json_data(name, tensor)
        entries.append(entry)
    result: dict[str, Any] = {"model_name": model, "model_version": MODEL_VERSION, "outputs": entries}
    if document.get("id"):
        result["id"] = document["id"]
    head = json.dumps(result, separators=(",", ":"), allow_nan=False).encode()
    if not chunks:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(chunks), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
