"""The gateway's entry limits over real gRPC and HTTP: request size, requests in flight, default deadline,
unparsable messages and the pod readiness endpoint."""

from __future__ import annotations

import asyncio
import gzip
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest

from conveyor_runtime.gateway import Gateway, create_gateway
from conveyor_runtime.protocol import SERVICE_NAME, InferenceStub, decode_tensors, encode_tensors, pb
from tests.support.pipeline_fixtures import FakeStep, RunningStep, manifest, start_fake_step


class Gate:
    """A step function that holds every call until `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = 0

    async def __call__(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.waiting += 1
        await self.release.wait()
        return {"y": arrays["x"] + 1}


@pytest.fixture
async def gated() -> AsyncIterator[tuple[Gateway, RunningStep, Gate]]:
    """One step behind a gate; the gateway admits 2 requests, defaults to a 1 s deadline, takes 4 KiB."""
    gate = Gate()
    step = await start_fake_step(FakeStep("only", gate, [("x", "FP32")], [("y", "FP32")]))
    m = manifest(
        "lim",
        [{"name": "only", "op": "identity"}],
        gateway={"maxConcurrentRequests": 2, "defaultTimeoutSeconds": 1.0, "maxRequestBytes": 4096},
    )
    gateway = create_gateway(m, endpoints={"only": [step.address]}, host="127.0.0.1", grpc_port=0, http_port=0)
    await gateway.start()
    assert await gateway.wait_ready(10)
    try:
        yield gateway, step, gate
    finally:
        gate.release.set()
        await gateway.stop(0)
        await step.stop()


def _request(rows: int = 1) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="lim")
    encode_tensors(request, [("x", np.zeros((rows, 4), np.float32))])
    return request


def _http(port: int, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _json_body(rows: int) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 4], "data": [0.0] * (rows * 4)}]}
    ).encode()


async def test_gateway_refuses_requests_over_max_concurrent_at_once(gated: tuple[Gateway, RunningStep, Gate]) -> None:
    gateway, _, gate = gated
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = InferenceStub(channel)
        held = [asyncio.ensure_future(stub.ModelInfer(_request(), timeout=30)) for _ in range(2)]
        while gate.waiting < 2:
            await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ModelInfer(_request(), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "maxConcurrentRequests" in (info.value.details() or "")
        status, body = await asyncio.to_thread(_http, gateway.http_port or 0, "/v2/models/lim/infer", _json_body(1))
        assert status == 429 and "maxConcurrentRequests" in body["error"]
        gate.release.set()
        for answer in await asyncio.gather(*held):
            np.testing.assert_array_equal(decode_tensors(answer)["y"], np.ones((1, 4), np.float32))
        answer = await stub.ModelInfer(_request(), timeout=30)  # the slots came back
        np.testing.assert_array_equal(decode_tensors(answer)["y"], np.ones((1, 4), np.float32))


async def test_gateway_applies_its_default_deadline_to_requests_without_one(
    gated: tuple[Gateway, RunningStep, Gate],
) -> None:
    gateway, step, _ = gated
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await InferenceStub(channel).ModelInfer(_request())  # no client deadline; the step never answers
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    remaining = step.servicer.deadlines[-1]
    assert remaining is not None and 0 < remaining <= 1.05, "the step call must carry the default deadline"
    status, _ = await asyncio.to_thread(_http, gateway.http_port or 0, "/v2/models/lim/infer", _json_body(1))
    assert status == 504


async def test_gateway_grpc_request_over_max_request_bytes_is_invalid_argument(
    gated: tuple[Gateway, RunningStep, Gate],
) -> None:
    gateway, step, gate = gated
    gate.release.set()
    trimmer = gateway.servicer.trimmer
    trimmer.threshold_bytes, trimmer.delay_s = 4096, 0.0  # large, for this gateway
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = InferenceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ModelInfer(_request(rows=300), timeout=10)  # 4.8 KB of tensor data: over 4 KiB
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "maxRequestBytes" in (info.value.details() or "")
        assert step.servicer.calls == 0
        answer = await stub.ModelInfer(_request(rows=2), timeout=10)
        assert decode_tensors(answer)["y"].shape == (2, 4)
    for _ in range(500):  # the refused request's memory is given back: one trim after it
        if trimmer.trims:
            break
        await asyncio.sleep(0.01)
    assert trimmer.trims == 1


async def test_gateway_http_body_over_max_request_bytes_is_413_even_when_compressed_small(
    gated: tuple[Gateway, RunningStep, Gate],
) -> None:
    gateway, step, gate = gated
    gate.release.set()
    port = gateway.http_port or 0
    status, body = await asyncio.to_thread(_http, port, "/v2/models/lim/infer", _json_body(400))
    assert status == 413 and "maxRequestBytes" in body["error"]
    bomb = gzip.compress(b" " * (2 * 1024 * 1024))  # ~2 KB on the wire, 2 MiB (512x the limit) once decompressed
    assert len(bomb) < 4096
    status, body = await asyncio.to_thread(
        _http, port, "/v2/models/lim/infer", bomb, {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    )
    assert status == 413 and "after decompression" in body["error"]
    assert step.servicer.calls == 0
    status, body = await asyncio.to_thread(_http, port, "/v2/models/lim/infer", _json_body(1))
    assert status == 200 and body["outputs"][0]["data"] == [1.0] * 4


async def test_unparsable_grpc_message_is_invalid_argument_without_internal_names(
    gated: tuple[Gateway, RunningStep, Gate],
) -> None:
    gateway, _, _ = gated
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        raw = channel.unary_unary(f"/{SERVICE_NAME}/ModelInfer")  # bytes in, bytes out
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(b"\xff\xff\xff\xff\x0f\x01", timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = info.value.details() or ""
        assert "not a valid protobuf message" in details
        assert "class" not in details and "conveyor.oip" not in details


async def test_gateway_pod_readiness_follows_the_gateway_not_the_steps(gated: tuple[Gateway, RunningStep, Gate]) -> None:
    gateway, step, _ = gated
    port = gateway.http_port or 0
    assert (await asyncio.to_thread(_http, port, "/gateway/ready"))[0] == 200
    await step.set_serving(False)
    while gateway.executor.ready:
        await asyncio.sleep(0.02)
    assert (await asyncio.to_thread(_http, port, "/v2/health/ready"))[0] == 503  # the protocol's meaning: all steps
    assert (await asyncio.to_thread(_http, port, "/gateway/ready"))[0] == 200  # the pod stays in its Service
    stopping = asyncio.ensure_future(gateway.stop(5, pre_stop=1.0))
    while gateway.serving:
        await asyncio.sleep(0.01)
    assert (await asyncio.to_thread(_http, port, "/gateway/ready"))[0] == 503  # answered during the pre-stop window
    await stopping
