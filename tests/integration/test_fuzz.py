"""Fuzzing both protocols against real pipelines: hypothesis mutates valid gRPC and HTTP requests field by field.

Two pipelines run in this process on loopback with real step servers, real gateways and real ONNX Runtime:
`echo` (identity -> identity: a valid request comes back exactly as sent) and `affine` (identity -> an ONNX model
computing 2x+1). Each example sends one mutated request, which must get a client error (never INTERNAL, UNKNOWN or
500) or, where the mutation leaves it valid, the exact answer; then one valid request whose answer is checked.
Examples are derandomized, so every CI run tries the same ones; `conveyor bench fuzz` is the long run.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import http.client
import json
import math
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper

from conveyor_benchmarks.fuzz_cases import json_paths, replace_at
from conveyor_runtime.gateway import Gateway, create_gateway
from conveyor_runtime.protocol import pb
from conveyor_runtime.step import StepServer, create_step_server
from tests.support.pipeline_fixtures import manifest

#: Small enough that oversize requests are cheap to send; every valid request here is far below it.
MAX_REQUEST_BYTES = 64 * 1024
#: The affine model step's queue: a request with more rows can never be served (INVALID_ARGUMENT).
MAX_QUEUE_ROWS = 64
METHOD = "/inference.GRPCInferenceService/ModelInfer"
CLIENT_ERRORS = {"INVALID_ARGUMENT", "NOT_FOUND"}
HTTP_CLIENT_ERRORS = {400, 404, 413}

#: Datatypes as the protocol names them and their numpy dtypes, spelled out from the protocol's naming rule rather
#: than taken from the codec under test.
NUMPY = {
    "BOOL": np.dtype(np.bool_),
    "BYTES": np.dtype(object),
    **{f"{kind}{bits}": np.dtype(f"{code}{bits // 8}") for kind, code in (("UINT", "u"), ("INT", "i")) for bits in (8, 16, 32, 64)},
    **{f"FP{bits}": np.dtype(f"f{bits // 8}") for bits in (16, 32, 64)},
}


def contents_field(datatype: str) -> str:
    """The InferTensorContents field that carries `datatype` (integers narrower than 64 bits share a 32-bit one)."""
    if datatype in {"UINT64", "INT64", "FP32", "FP64"} or not datatype[-1].isdigit():
        return f"{datatype.lower()}_contents"
    return "uint_contents" if datatype.startswith("U") else "int_contents"


FIELD = {datatype: contents_field(datatype) for datatype in NUMPY if datatype != "FP16"}
NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}



def fuzz(examples: int) -> settings:
    """Hypothesis settings for one test here: derandomized (every CI run tries the same examples), no deadline
    (the machine is shared), no example database."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )



# --- the pipelines, served from a thread with its own event loop (the clients below are plain blocking ones) ---


def _affine_model(path: Path) -> Path:
    """y = 2x + 1 on FP32 [N, 4]."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["twice"]), helper.make_node("Add", ["twice", "one"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]), helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


@dataclass
class Pipelines:
    """Where the two pipelines and their steps listen."""

    grpc: dict[str, str] = field(default_factory=dict)  # pipeline -> gateway gRPC address
    http: dict[str, str] = field(default_factory=dict)  # pipeline -> gateway HTTP host:port
    steps: dict[str, str] = field(default_factory=dict)  # step -> gRPC address
    _servers: list[StepServer] = field(default_factory=list)
    _gateways: list[Gateway] = field(default_factory=list)

    async def start(self, model: Path) -> None:
        limits = {"maxRequestBytes": MAX_REQUEST_BYTES}
        pipelines = [
            manifest("echo", [{"name": "a", "op": "identity"}, {"name": "b", "op": "identity"}], gateway=limits),
            manifest(
                "affine",
                [
                    {"name": "p", "op": "identity"},
                    {
                        "name": "m",
                        "model": {"path": str(model)},
                        "batching": {"maxBatchSize": 8, "maxQueueDelayMicroseconds": 200, "maxQueueSize": MAX_QUEUE_ROWS},
                    },
                ],
                gateway=limits,
            ),
        ]
        for pipeline in pipelines:
            for step in pipeline.spec.steps:
                server = create_step_server(step, base_dir=model.parent, grace_s=1.0)
                self._servers.append(server)
                await server.start()
                self.steps[step.name] = f"127.0.0.1:{server.port}"
            endpoints = {step.name: [self.steps[step.name]] for step in pipeline.spec.steps}
            gateway = create_gateway(pipeline, endpoints=endpoints, host="127.0.0.1", grpc_port=0, http_port=0)
            self._gateways.append(gateway)
            await gateway.start()
            assert await gateway.wait_ready(30), f"gateway {pipeline.metadata.name} not ready"
            self.grpc[pipeline.metadata.name] = f"127.0.0.1:{gateway.grpc_port}"
            self.http[pipeline.metadata.name] = f"127.0.0.1:{gateway.http_port}"

    async def stop(self) -> None:
        for gateway in self._gateways:
            await gateway.stop(0)
        for server in self._servers:
            await server.stop(grace=1.0)


@dataclass
class Clients:
    """Blocking clients of the pipelines: raw gRPC bytes in and out, and HTTP."""

    where: Pipelines
    channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def grpc(self, address: str, message: bytes) -> tuple[str, pb.ModelInferResponse | None, str]:
        """(status code name, response or None, details) of one ModelInfer call carrying `message` as is."""
        if address not in self.channels:
            self.channels[address] = grpc.insecure_channel(address)
        call = self.channels[address].unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        try:
            answer = call(message, timeout=30)
        except grpc.RpcError as exc:
            return exc.code().name, None, exc.details() or ""
        return "OK", pb.ModelInferResponse.FromString(answer), ""

    def http(self, pipeline: str, body: bytes, headers: dict[str, str] | None = None, path: str = "") -> tuple[int, bytes, dict[str, str]]:
        host, port = self.where.http[pipeline].split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            connection.request("POST", path or f"/v2/models/{pipeline}/infer", body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
        finally:
            connection.close()

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clients]:
    model = _affine_model(tmp_path_factory.mktemp("fuzz") / "affine.onnx")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-servers", daemon=True)
    thread.start()
    where = Pipelines()
    client = Clients(where)
    try:
        asyncio.run_coroutine_threadsafe(where.start(model), loop).result(120)
        yield client
    finally:
        client.close()
        asyncio.run_coroutine_threadsafe(where.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


# --- valid requests ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tensor:
    """One request tensor as the test means it: values in numpy, sent as raw bytes or typed contents."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray[Any, Any]
    typed: bool = False

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    def raw(self) -> bytes:
        """The wire bytes of the values: little-endian, BYTES elements each after a 4-byte length."""
        if self.datatype == "BYTES":
            return b"".join(struct.pack("<I", len(item)) + item for item in self.values.reshape(-1))
        return np.ascontiguousarray(self.values, dtype=NUMPY[self.datatype].newbyteorder("<")).tobytes()


def _values(datatype: str, shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray[Any, Any]]:
    if datatype == "BYTES":
        return st.lists(st.text(max_size=6).map(str.encode), min_size=math.prod(shape), max_size=math.prod(shape)).map(
            lambda items: np.array(items + [b""], dtype=object)[:-1].reshape(shape)
        )
    return hnp.arrays(NUMPY[datatype], shape)


@st.composite
def tensors(
    draw: st.DrawFn, name: str, datatypes: tuple[str, ...] = tuple(NUMPY), typed: bool | None = None, min_side: int = 0
) -> Tensor:
    """One tensor; `typed` None: raw or typed contents at random (FP16 is always raw: no field carries it)."""
    datatype = draw(st.sampled_from(datatypes))
    shape = tuple(draw(st.lists(st.integers(min_side, 3), min_size=1, max_size=3)))
    values = draw(_values(datatype, shape))
    as_typed = datatype != "FP16" and (draw(st.booleans()) if typed is None else typed)
    return Tensor(name, datatype, shape, values, as_typed)


@st.composite
def echo_inputs(
    draw: st.DrawFn, datatypes: tuple[str, ...] = tuple(NUMPY), typed: bool | None = None, min_side: int = 0
) -> list[Tensor]:
    names = draw(st.lists(st.text("abcxyz_", min_size=1, max_size=6), min_size=1, max_size=3, unique=True))
    return [draw(tensors(name, datatypes, typed, min_side)) for name in names]


#: The gRPC mutations, and the requests each starts from where it needs a kind (raw or typed contents).
TYPED_DATATYPES = tuple(d for d in NUMPY if d != "FP16")
GRPC_KINDS: dict[str, st.SearchStrategy[list[Tensor]]] = {
    "negative dim": echo_inputs(),
    "huge shape": echo_inputs(),
    "reshape": echo_inputs(),
    "datatype": echo_inputs(),
    "unknown datatype": echo_inputs(),
    "raw length": echo_inputs(typed=False),
    "raw count": echo_inputs(typed=False),
    "raw and typed": echo_inputs(typed=False),
    "typed field": echo_inputs(TYPED_DATATYPES, typed=True),
    "typed range": echo_inputs(("UINT8", "UINT16", "INT8", "INT16"), typed=True, min_side=1),
    "empty name": echo_inputs(),
    "duplicate name": echo_inputs(),
    "no inputs": echo_inputs(),
    "model": echo_inputs(),
    "version": echo_inputs(),
    "parameters": echo_inputs(),
    "output": echo_inputs(),
    "oversize": echo_inputs(),
    "truncated": echo_inputs(),
    "flipped": echo_inputs(),
    "appended": echo_inputs(),
}


@st.composite
def affine_rows(draw: st.DrawFn) -> np.ndarray[Any, Any]:
    rows = draw(st.integers(1, 6))
    return draw(hnp.arrays(np.float32, (rows, 4), elements=st.floats(width=32, allow_subnormal=False)))


def grpc_message(model: str, inputs: list[Tensor], *, version: str = "", outputs: tuple[str, ...] = ()) -> pb.ModelInferRequest:
    """A ModelInferRequest; raw contents for all inputs unless every one is typed (the protocol allows no mix)."""
    message = pb.ModelInferRequest(model_name=model, model_version=version)
    all_typed = all(t.typed for t in inputs)
    for tensor in inputs:
        entry = message.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if all_typed:
            values = tensor.values.reshape(-1).tolist()
            getattr(entry.contents, FIELD[tensor.datatype]).extend(values)
        else:
            message.raw_input_contents.append(tensor.raw())
    for name in outputs:
        message.outputs.add(name=name)
    return message


#: What `echo_of` says of a request no server may accept.
REJECT = "must be rejected"


def _typed_raw(datatype: str, values: list[Any]) -> bytes | str:
    """The raw bytes of typed contents, or REJECT when the datatype cannot hold them exactly."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(item)) + item for item in values)
    dtype = NUMPY[datatype]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if not all(info.min <= v <= info.max for v in values):
            return REJECT
    return np.array(values, dtype=dtype.newbyteorder("<")).tobytes()


def echo_of(message: pb.ModelInferRequest) -> dict[str, tuple[str, tuple[int, ...], bytes]] | str | None:
    """What the echo pipeline must answer to `message` if it accepts it: every input as (datatype, shape, raw);
    REJECT when typed contents do not fit their datatype; None when the test cannot say (unknown datatype)."""
    expected = {}
    for index, tensor in enumerate(message.inputs):
        fields = [descriptor.name for descriptor, _ in tensor.contents.ListFields()]
        if message.raw_input_contents:
            if fields:
                return REJECT  # raw and typed contents at once
            raw: bytes | str = message.raw_input_contents[index] if index < len(message.raw_input_contents) else b""
        elif set(fields) - {FIELD.get(tensor.datatype)}:
            return REJECT  # values in a field that does not carry this datatype
        elif tensor.datatype == "FP16":
            return REJECT  # no typed contents field carries FP16
        elif tensor.datatype in FIELD:
            raw = _typed_raw(tensor.datatype, list(getattr(tensor.contents, FIELD[tensor.datatype])))
        else:
            return None
        if raw == REJECT:
            return REJECT
        assert isinstance(raw, bytes)
        expected[tensor.name] = (tensor.datatype, tuple(tensor.shape), raw)
    return expected


def answer_of(response: pb.ModelInferResponse) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    assert len(response.raw_output_contents) == len(response.outputs), "every output comes back as raw contents"
    return {o.name: (o.datatype, tuple(o.shape), raw) for o, raw in zip(response.outputs, response.raw_output_contents)}


def check_grpc_outcome(
    code: str, response: pb.ModelInferResponse | None, details: str, allowed: set[str], expected: Any, what: str
) -> None:
    assert code in allowed, f"{what}: got {code} ({details[:300]}); allowed {sorted(allowed)}"
    assert not (code == "OK" and expected == REJECT), f"{what}: accepted typed contents its datatype cannot hold"
    if code == "OK" and expected is not None:
        assert response is not None
        assert answer_of(response) == expected, f"{what}: the answer differs from the request it echoes"


def send_valid_echo(clients: Clients, inputs: list[Tensor]) -> None:
    message = grpc_message("echo", inputs)
    code, response, details = clients.grpc(clients.where.grpc["echo"], message.SerializeToString())
    check_grpc_outcome(code, response, details, {"OK"}, echo_of(message), "valid echo request")


def affine_expected(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    with np.errstate(over="ignore", invalid="ignore"):
        return x * np.float32(2) + np.float32(1)


def send_valid_affine(clients: Clients, x: np.ndarray[Any, Any], target: str = "gateway") -> None:
    model, address = ("affine", clients.where.grpc["affine"]) if target == "gateway" else ("m", clients.where.steps["m"])
    message = grpc_message(model, [Tensor("x", "FP32", x.shape, x)])
    code, response, details = clients.grpc(address, message.SerializeToString())
    assert code == "OK", f"valid affine request to the {target}: {code} {details}"
    assert response is not None
    (datatype, shape, raw), *_ = answer_of(response).values()
    assert (datatype, shape) == ("FP32", x.shape)
    np.testing.assert_array_equal(np.frombuffer(raw, np.float32).reshape(shape), affine_expected(x))


# --- gRPC mutations: each returns the message to send and the outcomes allowed ----------------------------------

@dataclass(frozen=True)
class Mutation:
    """A mutated request: its bytes, the outcomes allowed, and the exact echo when it is accepted (None: any)."""

    serialized: bytes
    allowed: set[str]
    expected: Any = None

    def __repr__(self) -> str:  # hypothesis prints it when a test fails: keep it readable
        head = self.serialized[:200]
        return f"Mutation({len(self.serialized)} bytes {head!r}{'...' if head != self.serialized else ''}, allowed={sorted(self.allowed)})"


def _reject(message: pb.ModelInferRequest, codes: set[str] | None = None) -> Mutation:
    return Mutation(message.SerializeToString(), codes or {"INVALID_ARGUMENT"})


def _accept(message: pb.ModelInferRequest, codes: set[str] | None = None) -> Mutation:
    """Valid still (or possibly, with `codes`): when accepted, the echo of what it now says."""
    return Mutation(message.SerializeToString(), codes or {"OK"}, echo_of(message))


def _by_count(message: pb.ModelInferRequest, tensor: Tensor, new_shape: list[int]) -> Mutation:
    """A new shape: valid exactly when it holds as many elements as the data (an empty tensor holds none)."""
    entry = next(e for e in message.inputs if e.name == tensor.name)
    entry.ClearField("shape")
    entry.shape.extend(new_shape)
    if all(d >= 0 for d in new_shape) and math.prod(new_shape) == tensor.count:
        return _accept(message)
    return _reject(message)


@st.composite
def grpc_mutations(draw: st.DrawFn, kind: str, model: str, inputs: list[Tensor]) -> Mutation:
    """`kind` of mutation applied to a valid request for `inputs`."""
    message = grpc_message(model, inputs)
    raw = bool(message.raw_input_contents)
    index = draw(st.integers(0, len(inputs) - 1))
    tensor, entry = inputs[index], message.inputs[index]
    if kind == "negative dim":
        shape = list(entry.shape)
        shape[draw(st.integers(0, len(shape) - 1))] = draw(st.integers(-(2**63), -1))
        return _by_count(message, tensor, shape)
    if kind == "huge shape":
        # element counts that wrap int64 or no memory could hold, whatever the datatype (and even with a 0 in it)
        entry.ClearField("shape")
        entry.shape.extend(draw(st.sampled_from([[2**33, 2**31], [0, 2**62, 4], [2**63 - 1], [2**31, 2**31, 2**31], [2**62, 4]])))
        return _reject(message)
    if kind == "reshape":
        return _by_count(message, tensor, draw(st.lists(st.integers(0, 5), max_size=4)))
    if kind == "datatype":
        # another known datatype over the same bytes: accepted only when they fit it, then echoed as sent
        entry.datatype = draw(st.sampled_from([d for d in NUMPY if d != tensor.datatype]))
        sized = entry.datatype != "BYTES" and raw
        fits = sized and len(message.raw_input_contents[index]) == tensor.count * NUMPY[entry.datatype].itemsize
        if sized and not fits:
            return _reject(message)
        return _accept(message, {"OK", "INVALID_ARGUMENT"})
    if kind == "unknown datatype":
        entry.datatype = draw(st.sampled_from(["", "fp32", "FLOAT", "BF16", "STRING", "INT128", "X" * 10_000]))
        return _reject(message)
    if kind == "raw length":
        data = message.raw_input_contents[index]
        cut = draw(st.integers(1, 8))
        message.raw_input_contents[index] = data[:-cut] if len(data) >= cut and draw(st.booleans()) else data + bytes(cut)
        return _reject(message)
    if kind == "raw count":
        message.raw_input_contents.append(b"\x00" * draw(st.integers(0, 8)))
        return _reject(message)
    if kind == "raw and typed":
        contents_field = FIELD.get(tensor.datatype, "fp32_contents")
        getattr(entry.contents, contents_field).append({"bool_contents": True, "bytes_contents": b"x"}.get(contents_field, 0))
        return _reject(message)
    if kind == "typed field":
        # values in a field that does not carry this datatype, instead of or besides the right one
        wrong = draw(st.sampled_from(sorted({"int64_contents", "uint64_contents", "fp64_contents"} - {FIELD[tensor.datatype]})))
        if draw(st.booleans()):
            entry.contents.ClearField(FIELD[tensor.datatype])  # type: ignore[arg-type]
        getattr(entry.contents, wrong).extend([1] * max(tensor.count, 1))
        return _reject(message)
    if kind == "typed range":
        info = np.iinfo(NUMPY[tensor.datatype])
        values = getattr(entry.contents, FIELD[tensor.datatype])
        wide = [2**32 - 1] if tensor.datatype.startswith("U") else [int(info.min) - 1, -(2**31), 2**31 - 1]
        values[draw(st.integers(0, len(values) - 1))] = draw(st.sampled_from([int(info.max) + 1, *wide]))
        return _reject(message)
    if kind == "empty name":
        entry.name = ""
        return _reject(message)
    if kind == "duplicate name":
        message.inputs.add().CopyFrom(entry)
        if raw:
            message.raw_input_contents.append(message.raw_input_contents[index])
        return _reject(message)
    if kind == "no inputs":
        message.ClearField("inputs")
        message.ClearField("raw_input_contents")
        # a step whose op declares no inputs (identity) still answers OK with no outputs: a known defect of
        # step.inputs, pinned by test_fuzz_grpc_step_without_inputs_is_invalid below
        return _reject(message, {"INVALID_ARGUMENT"} if model in {"echo", "affine"} else {"INVALID_ARGUMENT", "OK"})
    if kind == "model":
        message.model_name = draw(st.sampled_from(["", "nope", model + "x", "x" * 10_000]))
        # an empty name means "the one model" to a step, not to the gateway
        return _accept(message, {"NOT_FOUND"} | ({"OK"} if message.model_name == "" else set()))
    if kind == "version":
        message.model_version = draw(st.sampled_from(["2", "0", "latest", "v1", "1" * 5000]))
        return _reject(message, {"NOT_FOUND"})
    if kind == "parameters":
        # parameters of every kind, at every level, that the servers do not act on: the answer is unchanged
        for parameters in (message.parameters, entry.parameters):
            key = draw(st.sampled_from(["fuzz", "priority_hint", "x" * 300]))
            setter = draw(st.sampled_from(["bool_param", "int64_param", "string_param", "double_param", "uint64_param"]))
            value = {"bool_param": True, "int64_param": -(2**63), "string_param": "é" * 100, "double_param": math.nan, "uint64_param": 2**64 - 1}
            setattr(parameters[key], setter, value[setter])
        return _accept(message)
    if kind == "output":
        name = draw(st.sampled_from(["", "no-such-output", "y" * 5000]))
        message.outputs.add(name=name).parameters["binary_data"].bool_param = True
        return _reject(message)
    if kind == "oversize":
        # over the gateway's limit: INVALID_ARGUMENT naming it; over twice the limit gRPC refuses the message
        # before reading it, with RESOURCE_EXHAUSTED (as the README says). A step's own limit is larger.
        padding = draw(st.sampled_from([MAX_REQUEST_BYTES + 1, 2 * MAX_REQUEST_BYTES - 100, 5 * MAX_REQUEST_BYTES]))
        message.parameters["padding"].string_param = "p" * padding
        if model not in {"echo", "affine"}:
            return _accept(message)
        refused = {"INVALID_ARGUMENT"} if message.ByteSize() <= 2 * MAX_REQUEST_BYTES else {"RESOURCE_EXHAUSTED"}
        return _reject(message, refused)
    serialized = message.SerializeToString()
    if kind == "truncated":
        serialized = serialized[: draw(st.integers(0, max(len(serialized) - 1, 0)))]
    elif kind == "flipped":
        data = bytearray(serialized)
        for _ in range(draw(st.integers(1, 4))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] = draw(st.integers(0, 255))
        serialized = bytes(data)
    else:
        assert kind == "appended", kind
        serialized += draw(st.binary(min_size=1, max_size=12))
    return _parsed(serialized)


def _parsed(serialized: bytes) -> Mutation:
    """Bytes that may not parse: INVALID_ARGUMENT if they do not; if they do, whatever they now say, answered as
    a client error or exactly."""
    try:
        message = pb.ModelInferRequest.FromString(serialized)
    except Exception:
        return Mutation(serialized, {"INVALID_ARGUMENT"})
    return Mutation(serialized, CLIENT_ERRORS | {"OK"}, echo_of(message))


# --- the gRPC tests --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["gateway", "step"])
@pytest.mark.parametrize("kind", GRPC_KINDS)
@fuzz(15)
@given(data=st.data(), valid=echo_inputs())
def test_fuzz_grpc_answers_mutated_requests_with_client_errors_or_exactly(
    clients: Clients, kind: str, target: str, data: st.DataObject, valid: list[Tensor]
) -> None:
    """The echo pipeline's gateway, and its step `b` called directly (model "" is a step's one model)."""
    model, address = ("echo", clients.where.grpc["echo"]) if target == "gateway" else ("b", clients.where.steps["b"])
    sent = data.draw(grpc_mutations(kind, model, data.draw(GRPC_KINDS[kind])))
    allowed = {"OK"} if target == "step" and sent.allowed == {"NOT_FOUND", "OK"} else sent.allowed
    code, response, details = clients.grpc(address, sent.serialized)
    event(f"answer: {code}")
    check_grpc_outcome(code, response, details, allowed, sent.expected, f"mutated request to the {target}")
    send_valid_echo(clients, valid)


@fuzz(100)
@given(
    data=st.data(),
    x=affine_rows(),
    kind=st.sampled_from(["features", "datatype", "rank", "rows over the queue", "two inputs"]),
    target=st.sampled_from(["gateway", "step"]),
)
def test_fuzz_grpc_model_step_rejects_tensors_it_cannot_take(
    clients: Clients, data: st.DataObject, x: np.ndarray[Any, Any], kind: str, target: str
) -> None:
    model, address = ("affine", clients.where.grpc["affine"]) if target == "gateway" else ("m", clients.where.steps["m"])
    if kind == "features":
        bad = [Tensor("x", "FP32", (len(x), 5), np.zeros((len(x), 5), np.float32))]
    elif kind == "datatype":
        bad = [data.draw(tensors("x", tuple(d for d in NUMPY if d != "FP32")).filter(lambda t: t.count > 0))]
    elif kind == "rank":
        bad = [Tensor("x", "FP32", (len(x), 2, 2), x.reshape(len(x), 2, 2))]
    elif kind == "rows over the queue":
        rows = data.draw(st.integers(MAX_QUEUE_ROWS + 1, 4 * MAX_QUEUE_ROWS))
        bad = [Tensor("x", "FP32", (rows, 4), np.ones((rows, 4), np.float32))]
    else:
        bad = [Tensor("x", "FP32", x.shape, x), Tensor("z", "FP32", x.shape, x)]
    code, _, details = clients.grpc(address, grpc_message(model, bad).SerializeToString())
    # through the gateway, the identity step passes both on and the DAG routes `x` to the model: fair
    allowed = {"OK", "INVALID_ARGUMENT"} if kind == "two inputs" and target == "gateway" else {"INVALID_ARGUMENT"}
    assert code in allowed, f"{kind} to the {target}: {code} {details}"
    send_valid_affine(clients, x, target)


# --- HTTP -------------------------------------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def http_document(inputs: list[Tensor], binary: set[str], outputs: dict[str, bool]) -> tuple[bytes, dict[str, str]]:
    """(body, headers): inputs named in `binary` travel as binary data, the rest as JSON `data`."""
    entries, chunks = [], []
    for tensor in inputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if tensor.name in binary:
            chunk = tensor.raw()
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        elif tensor.datatype == "BYTES":
            entry["data"] = [item.decode() for item in tensor.values.reshape(-1)]
        else:
            entry["data"] = [_json_value(v) for v in tensor.values.reshape(-1).tolist()]
        entries.append(entry)
    document: dict[str, Any] = {"id": "fuzz", "inputs": entries}
    if outputs:
        document["outputs"] = [{"name": n, "parameters": {"binary_data": b}} for n, b in outputs.items()]
    head = json.dumps(document, allow_nan=False).encode()
    if not chunks:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(chunks), {"Inference-Header-Content-Length": str(len(head))}


def strict_json(text: bytes) -> Any:
    """RFC 8259 JSON only: Python's json would accept NaN and Infinity."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"the answer is not valid JSON: it contains {constant}")

    return json.loads(text, parse_constant=refuse)


def http_answer(status: int, body: bytes, headers: dict[str, str]) -> dict[str, tuple[str, tuple[int, ...], Any]]:
    """Each output of a 200 answer as (datatype, shape, raw bytes or the JSON values as a numpy array)."""
    length = headers.get("inference-header-content-length")
    head = strict_json(body[: int(length)] if length else body)
    binary, result = memoryview(body)[int(length) if length else len(body) :], {}
    offset = 0
    for output in head["outputs"]:
        shape = tuple(output["shape"])
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            result[output["name"]] = (output["datatype"], shape, bytes(binary[offset : offset + size]))
            offset += size
        else:
            floats = output["datatype"].startswith("FP")
            values = [NON_FINITE.get(v, v) if floats and isinstance(v, str) else v for v in output["data"]]
            result[output["name"]] = (output["datatype"], shape, values)
    assert offset == len(binary), "binary data not claimed by any output"
    return result


def check_http_echo(answer: dict[str, tuple[str, tuple[int, ...], Any]], inputs: list[Tensor]) -> None:
    assert set(answer) == {t.name for t in inputs}
    for tensor in inputs:
        datatype, shape, got = answer[tensor.name]
        assert (datatype, shape) == (tensor.datatype, tensor.shape), tensor.name
        if isinstance(got, bytes) and tensor.datatype.startswith("FP"):  # a NaN sent as JSON "NaN" loses sign and payload
            expected = tensor.values.reshape(-1)
            np.testing.assert_array_equal(np.frombuffer(got, NUMPY[tensor.datatype]), expected, err_msg=tensor.name)
        elif isinstance(got, bytes):
            assert got == tensor.raw(), tensor.name
        elif tensor.datatype == "BYTES":
            assert [v.encode() for v in got] == list(tensor.values.reshape(-1)), tensor.name
        else:
            np.testing.assert_array_equal(np.array(got, dtype=NUMPY[tensor.datatype]), tensor.values.reshape(-1), err_msg=tensor.name)


@st.composite
def http_requests(draw: st.DrawFn, inputs: list[Tensor]) -> tuple[bytes, dict[str, str]]:
    """A valid HTTP request for `inputs`: each input JSON or binary, each output asked JSON or binary (or none)."""
    binary = {t.name for t in inputs if draw(st.booleans())}
    outputs = {t.name: draw(st.booleans()) for t in inputs} if draw(st.booleans()) else {}
    return http_document(inputs, binary, outputs)


def send_valid_http(clients: Clients, draw: Callable[[Any], Any], inputs: list[Tensor]) -> None:
    body, headers = draw(http_requests(inputs))
    status, answer, answer_headers = clients.http("echo", body, headers)
    assert status == 200, f"valid HTTP request: {status} {answer[:300]!r}"
    check_http_echo(http_answer(status, answer, answer_headers), inputs)


#: Members whose every other JSON type is an error (400), never a 500.
TYPED_MEMBERS = {
    ("inputs",): list,
    ("inputs", 0): dict,
    ("inputs", 0, "name"): str,
    ("inputs", 0, "datatype"): str,
    ("inputs", 0, "shape"): list,
    ("inputs", 0, "data"): list,
    ("inputs", 0, "parameters"): dict,
    ("id",): str,
    ("parameters",): dict,
    ("outputs",): list,
    ("outputs", 0): dict,
    ("outputs", 0, "name"): str,
    ("outputs", 0, "parameters"): dict,
}
JSON_VALUES = st.sampled_from([None, True, 0, -1, 2**70, 1.5, -1e308, "", "x", [], [None], {}, {"a": 1}, [[[[]]]]])


@dataclass(frozen=True)
class Posted:
    """A mutated HTTP request: body, headers, the statuses allowed, and what was changed."""

    body: bytes
    headers: dict[str, str]
    allowed: set[int]
    what: str = ""

    def __repr__(self) -> str:  # hypothesis prints it when a test fails: keep it readable
        head = self.body[:200]
        return f"Posted({len(self.body)} bytes {head!r}{'...' if head != self.body else ''}, {self.headers}, allowed={sorted(self.allowed)}, {self.what[:200]!r})"


HTTP_KINDS = [
    "member type", "anywhere", "remove member", "header length", "binary size", "corrupt gzip", "corrupt deflate",
    "gzip in gzip", "bomb", "truncated", "not utf-8", "deep", "model", "version", "shape", "datatype", "out of range",
    "bytes not strings", "oversize", "timeout",
]


@st.composite
def http_mutations(draw: st.DrawFn, kind: str, inputs: list[Tensor]) -> Posted:
    """A mutated HTTP request; 200 is allowed only where the mutation may leave it valid."""
    base_inputs = [replace(t, name=f"i{n}") for n, t in enumerate(inputs)]
    document: dict[str, Any] = json.loads(http_document(base_inputs, set(), {"i0": False})[0])
    json_body = json.dumps(document).encode()
    bad = {400}
    if kind == "member type":
        member = draw(st.sampled_from(sorted(TYPED_MEMBERS, key=str)))
        value = draw(JSON_VALUES.filter(lambda v: not isinstance(v, TYPED_MEMBERS[member])))
        null_is_absent = value is None and member[-1] == "parameters"  # `"parameters": null` reads as none given
        return Posted(json.dumps(replace_at(document, member, value)).encode(), {}, {200, 400} if null_is_absent else bad, f"{member}={value!r}")
    if kind == "anywhere":
        where = draw(st.sampled_from(json_paths(document)))
        value = draw(JSON_VALUES)
        return Posted(json.dumps(replace_at(document, where, value)).encode(), {}, {200, 400}, f"{where}={value!r}")
    if kind == "remove member":
        member = draw(st.sampled_from(["inputs", "name", "datatype", "shape", "data"]))
        if member == "inputs":
            del document["inputs"]
        else:
            del document["inputs"][0][member]
        return Posted(json.dumps(document).encode(), {}, bad, member)
    if kind == "header length" or kind == "binary size":
        body, headers = http_document(base_inputs, {"i0"}, {})
        length = int(headers["Inference-Header-Content-Length"])
        if kind == "header length":
            wrong = draw(st.sampled_from([str(length - 1), str(length + 1), "0", "-5", "abc", "1e3", " ", str(2**64), "²"]))
            return Posted(body, {"Inference-Header-Content-Length": wrong}, bad, wrong)
        head = json.loads(body[:length])
        head["inputs"][0]["parameters"]["binary_data_size"] += draw(st.sampled_from([-1, 1, 2**40, -(2**40)]))
        new_head = json.dumps(head).encode()
        return Posted(new_head + body[length:], {"Inference-Header-Content-Length": str(len(new_head))}, bad, "")
    if kind == "corrupt gzip":
        packed = gzip.compress(json_body)
        cut = draw(st.integers(1, len(packed) - 1))
        # a cut near the end (the 8-byte trailer, the last bytes of the stream, which the random tail may complete)
        # can leave the JSON whole: 200 may be fair there
        allowed = {200, 400} if cut >= len(packed) - 24 else bad
        return Posted(packed[:cut] + draw(st.binary(max_size=4)), {"Content-Encoding": "gzip"}, allowed, f"cut at {cut}/{len(packed)}")
    if kind == "corrupt deflate":
        # a stream cut short (once never answered at all), random bytes, or a gzip stream sent as deflate
        packed = draw(st.sampled_from([zlib.compress(json_body), gzip.compress(json_body), draw(st.binary(min_size=1, max_size=64))]))
        cut = draw(st.integers(1, max(len(packed) - 1, 1)))
        return Posted(packed[:cut], {"Content-Encoding": "deflate"}, bad, f"{packed[:2]!r}... cut at {cut}/{len(packed)}")
    if kind == "gzip in gzip":
        return Posted(gzip.compress(gzip.compress(json_body)), {"Content-Encoding": "gzip"}, bad, "")
    if kind == "bomb":  # small on the wire, over the limit once decompressed
        return Posted(gzip.compress(b" " * (MAX_REQUEST_BYTES * 8) + json_body), {"Content-Encoding": "gzip"}, {413}, "")
    if kind == "truncated":
        return Posted(json_body[: draw(st.integers(0, len(json_body) - 1))], {}, bad, "")
    if kind == "not utf-8":
        return Posted(b"\xff\xfe\x00" + json_body, {}, bad, "")
    if kind == "deep":
        depth = draw(st.sampled_from([5_000, 100_000]))
        return Posted(b'{"inputs":' + b"[" * depth + b"]" * depth + b"}", {}, {400, 413}, "")
    if kind == "model":
        return Posted(json_body, {"path": "/v2/models/" + draw(st.sampled_from(["nope", "x" * 5000, "echo2"])) + "/infer"}, {404}, "")
    if kind == "version":
        return Posted(json_body, {"path": "/v2/models/echo/versions/" + draw(st.sampled_from(["2", "0", "latest"])) + "/infer"}, {404}, "")
    if kind == "shape":
        shape = draw(st.sampled_from([[-1], [-1, -1], [2**70], [2**33, 2**31], [0, 2**62, 4], [1.5], ["1"], [True]]))
        document["inputs"][0]["shape"] = shape
        return Posted(json.dumps(document).encode(), {}, bad, str(shape))
    if kind == "datatype":
        document["inputs"][0]["datatype"] = draw(st.sampled_from(["", "fp32", "BF16", "X" * 10_000]))
        return Posted(json.dumps(document).encode(), {}, bad, "")
    if kind == "out of range":
        datatype, value = draw(
            st.sampled_from([("INT8", 1000), ("UINT8", -1), ("UINT64", 2**64), ("FP16", 1e300), ("INT32", 1.5), ("BOOL", 2), ("FP32", "many")])
        )
        document["inputs"][0].update(datatype=datatype, shape=[1], data=[value])
        return Posted(json.dumps(document).encode(), {}, bad, f"{datatype} {value}")
    if kind == "bytes not strings":
        value = draw(st.sampled_from([200_000_000, 10**20, None, [1], {"a": 1}, 1.5]))
        document["inputs"][0].update(datatype="BYTES", shape=[1], data=[value])
        return Posted(json.dumps(document).encode(), {}, bad, repr(value))
    if kind == "oversize":
        document["id"] = "x" * (MAX_REQUEST_BYTES + draw(st.integers(1, MAX_REQUEST_BYTES)))
        return Posted(json.dumps(document).encode(), {}, {413}, "")
    assert kind == "timeout", kind  # a request-level parameter the gateway reads; a wrong type is a client error
    document["parameters"] = {"timeout": draw(st.sampled_from(["soon", -1, [1], {"s": 1}, True]))}
    return Posted(json.dumps(document).encode(), {}, bad, "")


@pytest.mark.parametrize("kind", HTTP_KINDS)
@fuzz(15)
@given(data=st.data(), inputs=echo_inputs(), valid=echo_inputs())
def test_fuzz_http_gateway_answers_mutated_requests_with_client_errors(
    clients: Clients, kind: str, data: st.DataObject, inputs: list[Tensor], valid: list[Tensor]
) -> None:
    sent = data.draw(http_mutations(kind, inputs))
    headers = dict(sent.headers)
    path = headers.pop("path", "")
    status, answer, answer_headers = clients.http("echo", sent.body, headers, path)
    event(f"answer: {status}")
    assert status in sent.allowed, f"mutated HTTP request ({sent.what[:200]}): {status} {answer[:300]!r}; allowed {sorted(sent.allowed)}"
    if status == 200:
        http_answer(status, answer, answer_headers)  # well formed, valid JSON
    else:
        assert isinstance(strict_json(answer).get("error"), str), "an error answer is JSON naming the error"
    send_valid_http(clients, data.draw, valid)


@fuzz(150)
@given(data=st.data(), inputs=echo_inputs())
def test_fuzz_http_valid_requests_of_every_kind_are_echoed_exactly(clients: Clients, data: st.DataObject, inputs: list[Tensor]) -> None:
    """JSON and binary inputs, JSON and binary outputs, gzip and deflate bodies, unknown members: exact answers."""
    body, headers = data.draw(http_requests(inputs))
    encoding = data.draw(st.sampled_from(["identity", "gzip", "deflate"]))
    if encoding != "identity":
        body = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
        headers = {**headers, "Content-Encoding": encoding}
    status, answer, answer_headers = clients.http("echo", body, headers)
    assert status == 200, f"{encoding} request: {status} {answer[:300]!r}"
    check_http_echo(http_answer(status, answer, answer_headers), inputs)


@fuzz(60)
@given(x=affine_rows(), binary=st.booleans())
def test_fuzz_http_model_answers_with_nan_and_infinity_are_valid_json(clients: Clients, x: np.ndarray[Any, Any], binary: bool) -> None:
    tensor = Tensor("x", "FP32", x.shape, x)
    body, headers = http_document([tensor], {"x"} if binary else set(), {"y": binary})
    status, answer, answer_headers = clients.http("affine", body, headers)
    assert status == 200, f"{status} {answer[:300]!r}"
    datatype, shape, got = http_answer(status, answer, answer_headers)["y"]
    values = np.frombuffer(got, np.float32) if isinstance(got, bytes) else np.array(got, np.float32)
    np.testing.assert_array_equal(values.reshape(shape), affine_expected(x))


def test_fuzz_tritonclient_http_reads_non_finite_answers_back(clients: Clients) -> None:
    import tritonclient.http as thttp

    x = np.array([[math.nan, math.inf, -math.inf, 1.5]], dtype=np.float32)
    client = thttp.InferenceServerClient(clients.where.http["affine"])
    try:
        tensor = thttp.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        result = client.infer("affine", [tensor], outputs=[thttp.InferRequestedOutput("y", binary_data=False)])
        np.testing.assert_array_equal(result.as_numpy("y"), affine_expected(x))
    finally:
        client.close()


# --- defects this suite found (each failed before its fix) ---


def test_fuzz_grpc_step_without_inputs_is_invalid(clients: Clients) -> None:
    code, _, details = clients.grpc(clients.where.steps["b"], pb.ModelInferRequest(model_name="b").SerializeToString())
    assert code == "INVALID_ARGUMENT", f"{code} {details}"


def test_fuzz_http_truncated_deflate_body_is_answered_400(clients: Clients) -> None:
    host, port = clients.where.http["echo"].split(":")
    body = zlib.compress(b'{"inputs": []}')[:-3]
    with socket.create_connection((host, int(port)), timeout=3) as connection:
        head = f"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Encoding: deflate\r\nContent-Length: {len(body)}\r\n\r\n"
        connection.sendall(head.encode())
        time.sleep(0.2)  # the body in its own segment, as a client that streams it sends it
        connection.sendall(body)
        answer = connection.recv(4096)  # raises TimeoutError: no answer at all
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


def test_fuzz_http_connection_stays_usable_after_a_corrupt_compressed_body(clients: Clients) -> None:
    host, port = clients.where.http["echo"].split(":")
    valid = http_document([Tensor("x", "UINT8", (1,), np.array([7], np.uint8))], set(), {})[0]
    corrupt = gzip.compress(valid)[:30]
    statuses = []
    with socket.create_connection((host, int(port)), timeout=5) as connection, connection.makefile("rb") as reader:
        for body, encoding in ((corrupt, "deflate"), (valid, "identity")):
            head = f"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n\r\n"
            try:
                connection.sendall(head.encode() + body)
                statuses.append(reader.readline())
            except OSError as exc:  # the server closed the connection
                statuses.append(repr(exc).encode())
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            reader.read(length)
    assert statuses[0].startswith(b"HTTP/1.1 400"), statuses
    assert statuses[1].startswith(b"HTTP/1.1 200"), f"the valid request after it on the same connection: {statuses[1]!r}"


def test_fuzz_grpc_refused_requests_are_freed_without_the_cycle_collector(clients: Clients) -> None:
    message = grpc_message("echo", [Tensor("x", "UINT8", (1,), np.array([7], np.uint8))])
    message.parameters["padding"].string_param = "p" * (MAX_REQUEST_BYTES + 1)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(3):
            code, _, details = clients.grpc(clients.where.grpc["echo"], message.SerializeToString())
            assert code == "INVALID_ARGUMENT", details
        gc.collect()
        held = [o for o in gc.garbage if isinstance(o, pb.ModelInferRequest)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert not held, f"{len(held)} refused requests were only freed by the cycle collector"
