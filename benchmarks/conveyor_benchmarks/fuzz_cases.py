"""The cases of `conveyor bench fuzz`: structure-aware mutations of a valid image request (gRPC and HTTP), each saying
whether the request it makes must be refused, and the valid requests whose answers are checked byte for byte.

Written for pipelines whose entry step is `image-preprocess` (the payloads of `conveyor bench pipeline`).
"""

from __future__ import annotations

import gzip
import json
import math
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from conveyor_runtime.protocol import decode_tensors, pb

__all__ = ["GRPC_CASES", "HTTP_CASES", "Case", "Context", "HttpRequest", "Made", "Valid", "json_paths", "replace_at", "valid_requests"]

INPUT = "image"
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class HttpRequest:
    body: bytes
    headers: dict[str, str]
    path: str


@dataclass(frozen=True)
class Made:
    """One request a case made: the request, whether it must be refused, and what was done to it."""

    request: bytes | HttpRequest
    must_fail: bool
    what: str


@dataclass
class Context:
    """What the cases need to know of the pipeline."""

    model: str
    max_request_bytes: int
    max_rows: int  # more rows than any step queue holds: refused as INVALID_ARGUMENT


@dataclass
class Case:
    """A kind of mutation; `weight` sets how often it is picked; `oversize` cases are placed by the run's plan."""

    protocol: str
    name: str
    build: Callable[[random.Random, Context, npt.NDArray[Any]], Made]
    weight: float = 1.0
    oversize: bool = False
    context: Context = field(default_factory=lambda: Context("", 64 << 20, 1 << 20))

    def make(self, rng: random.Random, payload: npt.NDArray[Any]) -> Made:
        return self.build(rng, self.context, payload)


# --- gRPC ---------------------------------------------------------------------------------------------------------


def _datatype(payload: npt.NDArray[Any]) -> str:
    return "BYTES" if payload.dtype == object else "UINT8"


def _raw(payload: npt.NDArray[Any]) -> bytes:
    if payload.dtype == object:
        return b"".join(struct.pack("<I", len(item)) + bytes(item) for item in payload.reshape(-1))
    return np.ascontiguousarray(payload).tobytes()


def _message(model: str, payload: npt.NDArray[Any], typed: bool = False) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model)
    entry = message.inputs.add(name=INPUT, datatype=_datatype(payload), shape=payload.shape)
    if not typed:
        message.raw_input_contents.append(_raw(payload))
    elif payload.dtype == object:
        entry.contents.bytes_contents.extend(bytes(item) for item in payload.reshape(-1))
    else:
        entry.contents.uint_contents.extend(int(v) for v in payload.reshape(-1))
    return message


def _refused(message: pb.ModelInferRequest, what: str) -> Made:
    return Made(message.SerializeToString(), True, what)


def _set_shape(message: pb.ModelInferRequest, shape: list[int]) -> None:
    message.inputs[0].ClearField("shape")
    message.inputs[0].shape.extend(shape)


def _negative_dim(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    message = _message(ctx.model, payload)
    shape = list(payload.shape)
    shape[rng.randrange(len(shape))] = -rng.randint(1, 2**63)
    _set_shape(message, shape)
    return _refused(message, f"shape {shape}")


def _huge_shape(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    message = _message(ctx.model, payload)
    shape = rng.choice([[2**33, 2**31], [0, 2**62, 4], [2**63 - 1, 8, 8], [2**31, 2**31, 2**31], [2**62, 4, 4]])
    _set_shape(message, shape)
    return _refused(message, f"shape {shape}")


def _reshape(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    """Any small shape: valid only where it holds the data and is an image batch, so either answer is fair."""
    message = _message(ctx.model, payload)
    shape = [rng.randint(0, 16) for _ in range(rng.randint(0, 4))]
    _set_shape(message, shape)
    return Made(message.SerializeToString(), False, f"shape {shape}")


def _other_datatype(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    message = _message(ctx.model, payload)
    known = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]
    message.inputs[0].datatype = rng.choice([d for d in known if d != _datatype(payload)])
    return _refused(message, f"datatype {message.inputs[0].datatype}")  # image-preprocess takes UINT8 pixels or BYTES files


def _unknown_datatype(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    message = _message(ctx.model, payload)
    message.inputs[0].datatype = rng.choice(["", "uint8", "FLOAT", "BF16", "STRING", "INT128", "X" * rng.randint(1, 20_000)])
    return _refused(message, f"datatype {message.inputs[0].datatype[:20]!r}")


def _raw_length(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    message = _message(ctx.model, payload)
    raw, k = message.raw_input_contents[0], rng.randint(1, 64)
    message.raw_input_contents[0] = raw[:-k] if rng.random() < 0.5 and len(raw) >= k else raw + rng.randbytes(k)
    return _refused(message, f"raw {len(raw)} -> {len(message.raw_input_contents[0])} bytes")


def _raw_count(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    message = _message(ctx.model, payload)
    message.raw_input_contents.append(rng.randbytes(rng.randint(0, 64)))
    return _refused(message, "two raw_input_contents for one input")


def _raw_and_typed(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    message = _message(ctx.model, payload)
    message.inputs[0].contents.uint_contents.extend([rng.randint(0, 255)] * rng.randint(1, payload.size))
    return _refused(message, "raw and typed contents")


def _typed_wrong_field(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    message = _message(ctx.model, payload, typed=True)
    wrong = rng.choice(["int_contents", "int64_contents", "uint64_contents", "fp32_contents", "fp64_contents", "bool_contents"])
    getattr(message.inputs[0].contents, wrong).extend([1] * payload.size)
    if rng.random() < 0.5:
        message.inputs[0].contents.ClearField("uint_contents" if payload.dtype != object else "bytes_contents")
    return _refused(message, f"values in {wrong}")


def _typed_out_of_range(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    if payload.dtype == object:
        return _typed_wrong_field(rng, ctx, payload)
    message = _message(ctx.model, payload, typed=True)
    values = message.inputs[0].contents.uint_contents
    values[rng.randrange(len(values))] = rng.choice([256, 1000, 65535, 2**32 - 1])
    return _refused(message, "UINT8 typed value over 255")


def _empty_name(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    message = _message(ctx.model, payload)
    message.inputs[0].name = ""
    return _refused(message, "input without a name")


def _duplicate_input(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    message = _message(ctx.model, payload)
    message.inputs.add().CopyFrom(message.inputs[0])
    message.raw_input_contents.append(message.raw_input_contents[0])
    return _refused(message, "the input twice")


def _extra_input(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    message = _message(ctx.model, payload)
    message.inputs.add(name=rng.choice(["mask", "x", "image2"]), datatype="UINT8", shape=[1])
    message.raw_input_contents.append(b"\x01")
    return _refused(message, "an input the pipeline does not take")


def _no_inputs(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    return _refused(pb.ModelInferRequest(model_name=ctx.model), "no inputs")


def _wrong_model(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    message = _message(rng.choice(["nope", ctx.model + "x", "x" * rng.randint(1, 20_000)]), payload)
    return _refused(message, "unknown model")


def _wrong_version(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    message = _message(ctx.model, payload)
    message.model_version = rng.choice(["2", "0", "latest", "v1", "9" * 5000])
    return _refused(message, f"version {message.model_version[:10]!r}")


def _unknown_output(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    message = _message(ctx.model, payload)
    message.outputs.add(name=rng.choice(["", "no-such-output", "y" * 5000]))
    return _refused(message, "an output the pipeline does not give")


def _garbage_image(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    rows = max(1, len(payload))
    images = np.empty(rows, dtype=object)
    images[:] = [rng.randbytes(rng.randint(0, 200)) for _ in range(rows)]
    return _refused(_message(ctx.model, images), "BYTES rows that are no image")


def _too_many_rows(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    rows = rng.randint(ctx.max_rows + 1, 2 * ctx.max_rows)
    pixels = np.zeros((rows, *payload.shape[1:]), dtype=np.uint8) if payload.dtype != object else np.repeat(payload[:1], rows)
    return _refused(_message(ctx.model, pixels), f"{rows} rows, more than any queue holds")


def _zero_rows(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    return _refused(_message(ctx.model, payload[:0]), "0 rows")


def _grpc_oversize(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    message = _message(ctx.model, payload)
    message.parameters["padding"].string_param = "p" * (ctx.max_request_bytes + rng.randint(1, 4096))
    return _refused(message, "over maxRequestBytes")


def _parsed(serialized: bytes, what: str) -> Made:
    """Bytes that must be refused if they do not parse; if they do, whatever they now say may be answered."""
    try:
        pb.ModelInferRequest.FromString(serialized)
    except Exception:
        return Made(serialized, True, what + " (does not parse)")
    return Made(serialized, False, what + " (parses)")


def _truncated(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    serialized = _message(ctx.model, payload).SerializeToString()
    cut = rng.randrange(len(serialized))
    return _parsed(serialized[:cut], f"cut at {cut}/{len(serialized)}")


def _flipped(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    data = bytearray(_message(ctx.model, payload, typed=rng.random() < 0.3).SerializeToString())
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return _parsed(bytes(data), "bytes overwritten")


def _appended(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    return _parsed(_message(ctx.model, payload).SerializeToString() + rng.randbytes(rng.randint(1, 32)), "bytes appended")


def _grpc(name: str, build: Callable[[random.Random, Context, npt.NDArray[Any]], Made], weight: float = 1.0, oversize: bool = False) -> Case:
    return Case("grpc", name, build, weight, oversize)


GRPC_CASES = [
    _grpc("negative dim", _negative_dim),
    _grpc("huge shape", _huge_shape),
    _grpc("reshape", _reshape),
    _grpc("other datatype", _other_datatype),
    _grpc("unknown datatype", _unknown_datatype),
    _grpc("raw length", _raw_length),
    _grpc("raw count", _raw_count),
    _grpc("raw and typed", _raw_and_typed),
    _grpc("typed wrong field", _typed_wrong_field),
    _grpc("typed out of range", _typed_out_of_range),
    _grpc("empty name", _empty_name),
    _grpc("duplicate input", _duplicate_input),
    _grpc("extra input", _extra_input),
    _grpc("no inputs", _no_inputs),
    _grpc("wrong model", _wrong_model),
    _grpc("wrong version", _wrong_version),
    _grpc("unknown output", _unknown_output),
    _grpc("garbage image", _garbage_image),
    _grpc("too many rows", _too_many_rows, weight=0.3),
    _grpc("zero rows", _zero_rows),
    _grpc("oversize", _grpc_oversize, weight=0.01, oversize=True),
    _grpc("truncated", _truncated, weight=2.0),
    _grpc("flipped", _flipped, weight=3.0),
    _grpc("appended", _appended),
]


# --- HTTP ---------------------------------------------------------------------------------------------------------


def _pixels(payload: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The payload if it is pixels (JSON can carry them), else a small black image."""
    return payload if payload.dtype != object else np.zeros((1, 8, 8), np.uint8)


def _document(ctx: Context, payload: npt.NDArray[Any], binary: bool = False) -> tuple[dict[str, Any], bytes]:
    """(JSON header, binary data) of a valid request; BYTES payloads always travel as binary data."""
    entry: dict[str, Any] = {"name": INPUT, "datatype": _datatype(payload), "shape": list(payload.shape)}
    data = b""
    if binary or payload.dtype == object:
        data = _raw(payload)
        entry["parameters"] = {"binary_data_size": len(data)}
    else:
        entry["data"] = payload.reshape(-1).tolist()
    return {"id": "fuzz", "inputs": [entry], "outputs": [{"name": "labels"}]}, data


def _post(ctx: Context, document: Any, data: bytes = b"", headers: dict[str, str] | None = None, path: str = "") -> HttpRequest:
    head = json.dumps(document).encode()
    all_headers = {"Content-Type": "application/json", **({HEADER_LENGTH: str(len(head))} if data else {}), **(headers or {})}
    return HttpRequest(head + data, all_headers, path or f"/v2/models/{ctx.model}/infer")


def _http_refused(request: HttpRequest, what: str) -> Made:
    return Made(request, True, what)


#: Members with the JSON type each must have; any other type is a client error (a null `parameters` reads as none).
_MEMBERS: list[tuple[tuple[Any, ...], type]] = [
    (("inputs",), list),
    (("inputs", 0), dict),
    (("inputs", 0, "name"), str),
    (("inputs", 0, "datatype"), str),
    (("inputs", 0, "shape"), list),
    (("inputs", 0, "data"), list),
    (("inputs", 0, "parameters"), dict),
    (("id",), str),
    (("parameters",), dict),
    (("outputs",), list),
    (("outputs", 0), dict),
    (("outputs", 0, "name"), str),
    (("outputs", 0, "parameters"), dict),
]
_JSON_VALUES: list[Any] = [None, True, False, 0, -1, 2**70, 1.5, -1e308, "", "x", [], [None], {}, {"a": 1}, [[[[]]]]]


def replace_at(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    """`document` with the value at `path` (keys and indexes) replaced; the root replaced when `path` is empty."""
    if not path:
        return value
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return document


def _member_type(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    document, data = _document(ctx, _pixels(payload))
    path, kind = rng.choice(_MEMBERS)
    value = rng.choice([v for v in _JSON_VALUES if not isinstance(v, kind)])
    replace_at(document, path, value)
    return Made(_post(ctx, document, data), not (value is None and path[-1] == "parameters"), f"{path} = {value!r}")


def json_paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path in a JSON document, the root's included."""
    found = [path]
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in children:
        found += json_paths(child, (*path, key))
    return found


def _anywhere(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    document, data = _document(ctx, _pixels(payload))
    path = rng.choice(json_paths(document))
    value = rng.choice(_JSON_VALUES)
    return Made(_post(ctx, replace_at(document, path, value), data), False, f"{path} = {value!r}")


def _remove_member(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    document, data = _document(ctx, payload)
    member = rng.choice(["inputs", "name", "datatype", "shape", "data or binary_data_size"])
    if member == "inputs":
        del document["inputs"]
    elif member.startswith("data"):
        document["inputs"][0].pop("data", None)
        document["inputs"][0].pop("parameters", None)
    else:
        del document["inputs"][0][member]
    return _http_refused(_post(ctx, document, data), f"no {member}")


def _header_length(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    document, data = _document(ctx, payload, binary=True)
    request = _post(ctx, document, data)
    length = int(request.headers[HEADER_LENGTH])
    wrong = rng.choice([str(length - rng.randint(1, 10)), str(length + rng.randint(1, 10)), "0", "-5", "abc", "1e3", " ", str(2**64), "0x10"])
    return _http_refused(HttpRequest(request.body, {**request.headers, HEADER_LENGTH: wrong}, request.path), f"{HEADER_LENGTH}: {wrong}")


def _binary_size(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    document, data = _document(ctx, payload, binary=True)
    size = document["inputs"][0]["parameters"]["binary_data_size"]
    document["inputs"][0]["parameters"]["binary_data_size"] = rng.choice([size - 1, size + 1, 0, -1, 2**40, "8", 1.5, None, True])
    return _http_refused(_post(ctx, document, data), f"binary_data_size {document['inputs'][0]['parameters']['binary_data_size']!r}")


def _compressed(ctx: Context, payload: npt.NDArray[Any]) -> bytes:
    document, data = _document(ctx, _pixels(payload))
    return _post(ctx, document, data).body


def _corrupt_gzip(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    packed = gzip.compress(_compressed(ctx, payload))
    cut = rng.randint(1, len(packed) - 1)
    body = packed[:cut] + rng.randbytes(rng.randint(0, 8))
    # a cut near the end (the 8-byte trailer, the last bytes of the stream, which the random tail may complete) can
    # leave the JSON whole: accepting that is fair
    return Made(HttpRequest(body, {"Content-Encoding": "gzip"}, f"/v2/models/{ctx.model}/infer"), cut < len(packed) - 24, f"cut at {cut}/{len(packed)}")


def _corrupt_deflate(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    """A zlib stream cut short (once never answered at all), random bytes, or a gzip stream sent as deflate."""
    body = _compressed(ctx, payload)
    packed = rng.choice([zlib.compress(body), gzip.compress(body), rng.randbytes(rng.randint(1, 64))])
    cut = rng.randint(1, max(len(packed) - 1, 1))
    return _http_refused(HttpRequest(packed[:cut], {"Content-Encoding": "deflate"}, f"/v2/models/{ctx.model}/infer"), f"{packed[:2]!r}... cut at {cut}")


def _gzip_in_gzip(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    body = gzip.compress(gzip.compress(_compressed(ctx, payload)))
    return _http_refused(HttpRequest(body, {"Content-Encoding": "gzip"}, f"/v2/models/{ctx.model}/infer"), "gzip inside gzip")


def _bomb(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    body = gzip.compress(b" " * (ctx.max_request_bytes + rng.randint(1, 1 << 20)) + _compressed(ctx, payload), 9)
    return _http_refused(HttpRequest(body, {"Content-Encoding": "gzip"}, f"/v2/models/{ctx.model}/infer"), f"gzip of {len(body)} bytes over the limit once decompressed")


def _truncated_body(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    body = _compressed(ctx, payload)
    return _http_refused(HttpRequest(body[: rng.randrange(len(body))], {}, f"/v2/models/{ctx.model}/infer"), "body cut short")


def _not_utf8(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    body = rng.choice([b"\xff\xfe\x00", b"\xc3\x28", b"\x80"]) + _compressed(ctx, payload)
    return _http_refused(HttpRequest(body, {}, f"/v2/models/{ctx.model}/infer"), "not UTF-8")


def _deep(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    depth = rng.choice([1_000, 10_000, 100_000])
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
    return _http_refused(HttpRequest(b'{"inputs":' + opener * depth + b"1" + closer * depth + b"}", {}, f"/v2/models/{ctx.model}/infer"), f"nested {depth} deep")


def _http_wrong_model(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    document, data = _document(ctx, payload)
    name = rng.choice(["nope", ctx.model + "x", "x" * rng.randint(1, 4000), "%00", "..%2f"])
    return _http_refused(_post(ctx, document, data, path=f"/v2/models/{name}/infer"), "unknown model")


def _http_wrong_version(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    document, data = _document(ctx, payload)
    version = rng.choice(["2", "0", "latest", "-1", "9" * 1000])
    return _http_refused(_post(ctx, document, data, path=f"/v2/models/{ctx.model}/versions/{version}/infer"), f"version {version[:10]}")


def _bad_shape(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    document, data = _document(ctx, payload)
    shape = rng.choice([[-1], [-1, -1, -1], [2**70], [2**33, 2**31, 1], [0, 2**62, 4], [1.5, 8, 8], ["1", 8, 8], [True, 8, 8], [[1], 8, 8]])
    document["inputs"][0]["shape"] = shape
    return _http_refused(_post(ctx, document, data), f"shape {shape}")


def _http_unknown_datatype(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    document, data = _document(ctx, payload)
    document["inputs"][0]["datatype"] = rng.choice(["", "uint8", "BF16", "X" * rng.randint(1, 10_000)])
    return _http_refused(_post(ctx, document, data), "unknown datatype")


def _out_of_range(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    document, _ = _document(ctx, payload)
    datatype, value = rng.choice(
        [("UINT8", 256), ("UINT8", -1), ("UINT8", 1.5), ("INT8", 1000), ("UINT64", 2**64), ("INT64", -(2**63) - 1),
         ("FP16", 1e300), ("FP32", 1e39), ("FP32", "many"), ("BOOL", 2), ("UINT8", None), ("UINT8", "7")]
    )
    document["inputs"][0].update(datatype=datatype, shape=[1], data=[value])
    return _http_refused(_post(ctx, document), f"{datatype} {value!r}")


def _bytes_not_strings(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    document, _ = _document(ctx, payload)
    value = rng.choice([200_000_000, 10**20, -1, None, [1], {"a": 1}, 1.5, True])
    document["inputs"][0].update(datatype="BYTES", shape=[1], data=[value])
    return _http_refused(_post(ctx, document), f"BYTES data {value!r}")


def _garbage_image_json(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    document, _ = _document(ctx, payload)
    rows = rng.randint(1, 4)
    document["inputs"][0].update(datatype="BYTES", shape=[rows], data=["".join(rng.choice("abc\u00e9\u4e2d") for _ in range(9)) for _ in range(rows)])
    return _http_refused(_post(ctx, document), "BYTES strings that are no image")


def _http_unknown_output(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    document, data = _document(ctx, payload)
    document["outputs"] = [{"name": rng.choice(["", "nope", "y" * 3000]), "parameters": {"binary_data": rng.random() < 0.5}}]
    return _http_refused(_post(ctx, document, data), "unknown output")


def _http_oversize(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    document, data = _document(ctx, payload)
    document["id"] = "x" * (ctx.max_request_bytes + rng.randint(1, 4096))
    return _http_refused(_post(ctx, document, data), "over maxRequestBytes")


def _bad_timeout(rng: random.Random, ctx: Context, payload: npt.NDArray[Any]) -> Made:
    document, data = _document(ctx, payload)
    document["parameters"] = {"timeout": rng.choice(["soon", -1, [1], {"s": 1}, True, -1e300])}
    return _http_refused(_post(ctx, document, data), f"timeout {document['parameters']['timeout']!r}")


def _http(name: str, build: Callable[[random.Random, Context, npt.NDArray[Any]], Made], weight: float = 1.0, oversize: bool = False) -> Case:
    return Case("http", name, build, weight, oversize)


HTTP_CASES = [
    _http("member type", _member_type, weight=3.0),
    _http("anywhere", _anywhere, weight=3.0),
    _http("remove member", _remove_member),
    _http("header length", _header_length),
    _http("binary size", _binary_size),
    _http("corrupt gzip", _corrupt_gzip),
    _http("corrupt deflate", _corrupt_deflate),
    _http("gzip in gzip", _gzip_in_gzip),
    _http("gzip bomb", _bomb, weight=0.01, oversize=True),
    _http("truncated body", _truncated_body),
    _http("not utf-8", _not_utf8),
    _http("deep", _deep, weight=0.3),
    _http("wrong model", _http_wrong_model),
    _http("wrong version", _http_wrong_version),
    _http("bad shape", _bad_shape),
    _http("unknown datatype", _http_unknown_datatype),
    _http("out of range", _out_of_range),
    _http("bytes not strings", _bytes_not_strings),
    _http("garbage image", _garbage_image_json),
    _http("unknown output", _http_unknown_output),
    _http("oversize", _http_oversize, weight=0.01, oversize=True),
    _http("bad timeout", _bad_timeout),
]


# --- valid requests, checked against the answer the pipeline gave before any fuzzing ------------------------------


def _strict_json(text: bytes) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not valid JSON")

    return json.loads(text, parse_constant=refuse)


@dataclass
class Valid:
    """A valid request and the exact answer it must get: (datatype, shape, raw bytes) per output."""

    what: str
    request: bytes | HttpRequest
    expected: dict[str, tuple[str, tuple[int, ...], bytes]]
    arrays: dict[str, npt.NDArray[Any]]

    def check_grpc(self, outcome: str, answer: bytes | None) -> str | None:
        """None when exact, else what went wrong."""
        if outcome != "OK" or answer is None:
            return f"failed: {outcome}"
        response = pb.ModelInferResponse.FromString(answer)
        got = {o.name: (o.datatype, tuple(o.shape), raw) for o, raw in zip(response.outputs, response.raw_output_contents)}
        return None if got == self.expected else f"wrong: {sorted(got)} differs from the first answer"

    def check_http(self, outcome: str, body: bytes, headers: dict[str, str]) -> str | None:
        if outcome != "200":
            return f"failed: HTTP {outcome} {body[:200]!r}"
        try:
            length = int(headers.get(HEADER_LENGTH.lower(), len(body)))
            head, binary, offset = _strict_json(body[:length]), body[length:], 0
            got: dict[str, Any] = {}
            for output in head["outputs"]:
                size = (output.get("parameters") or {}).get("binary_data_size")
                if size is not None:
                    got[output["name"]] = (output["datatype"], tuple(output["shape"]), binary[offset : offset + size])
                    offset += size
                else:
                    got[output["name"]] = (output["datatype"], tuple(output["shape"]), output["data"])
        except (ValueError, KeyError, TypeError) as exc:
            return f"wrong: the answer does not parse: {exc}"
        if set(got) != set(self.expected):
            return f"wrong: outputs {sorted(got)}, expected {sorted(self.expected)}"
        for name, (datatype, shape, data) in got.items():
            want = self.expected[name]
            if (datatype, shape) != want[:2]:
                return f"wrong: {name} is {datatype} {list(shape)}, expected {want[0]} {list(want[1])}"
            same = data == want[2] if isinstance(data, bytes) else _json_equal(data, self.arrays[name])
            if not same:
                return f"wrong: {name} differs from the first answer"
        return None


def _json_equal(data: list[Any], expected: npt.NDArray[Any]) -> bool:
    flat = expected.reshape(-1)
    if flat.dtype == object:
        return [v.encode() if isinstance(v, str) else v for v in data] == list(flat)
    non_finite = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
    values = np.array([non_finite.get(v, v) if isinstance(v, str) else v for v in data], dtype=flat.dtype)
    return bool(np.array_equal(values, flat, equal_nan=flat.dtype.kind == "f"))


def valid_requests(model: str, payloads: list[npt.NDArray[Any]], golden: list[pb.ModelInferResponse]) -> list[Valid]:
    """Every kind of valid request for each payload: gRPC raw, typed, with parameters, for one output; HTTP JSON,
    binary both ways, gzip, deflate."""
    ctx = Context(model, 0, 0)
    valids = []
    for payload, answer in zip(payloads, golden):
        expected = {o.name: (o.datatype, tuple(o.shape), raw) for o, raw in zip(answer.outputs, answer.raw_output_contents)}
        arrays = decode_tensors(answer)
        first = next(iter(expected))
        with_parameters = _message(model, payload)
        with_parameters.id = "fuzz-\u00e9"
        for parameters in (with_parameters.parameters, with_parameters.inputs[0].parameters):
            parameters["fuzz_bool"].bool_param = True
            parameters["fuzz_int"].int64_param = -(2**63)
            parameters["fuzz_text"].string_param = "\u00e9" * 100
        one_output = _message(model, payload)
        one_output.outputs.add(name=first)
        valids += [
            Valid("gRPC raw", _message(model, payload).SerializeToString(), expected, arrays),
            Valid("gRPC typed contents", _message(model, payload, typed=True).SerializeToString(), expected, arrays),
            Valid("gRPC with parameters", with_parameters.SerializeToString(), expected, arrays),
            Valid(f"gRPC output {first!r} only", one_output.SerializeToString(), {first: expected[first]}, arrays),
        ]
        document, data = _document(ctx, payload)
        del document["outputs"]
        plain = _post(ctx, document, data)
        binary_doc, binary_data = _document(ctx, payload, binary=True)
        binary_doc["outputs"] = [{"name": name, "parameters": {"binary_data": True}} for name in expected]
        valids += [
            Valid("HTTP JSON", plain, expected, arrays),
            Valid("HTTP binary", _post(ctx, binary_doc, binary_data), expected, arrays),
            Valid("HTTP gzip", HttpRequest(gzip.compress(plain.body), {**plain.headers, "Content-Encoding": "gzip"}, plain.path), expected, arrays),
        ]
    return valids
