"""A model step served on 127.0.0.1 over real gRPC and ONNX Runtime, called by tritonclient and plain stubs."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

import grpc
import grpc.aio
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conveyor_runtime.errors import ModelLoadError
from conveyor_runtime.protocol import SERVICE_NAME, decode_tensors, encode_tensors, pb
from conveyor_runtime.step import cpu_count, create_step_server
from tests.support.step_fixtures import ModelFiles, model_files, running_step, step_spec, stub_for  # noqa: F401


def _reference(path: Any, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["logits"], {"image": x})[0])


def _request(x: np.ndarray, name: str = "image", model: str = "classify") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id="r1")
    encode_tensors(request, [(name, x)])
    return request


async def test_step_server_works_with_an_unmodified_tritonclient(model_files: ModelFiles) -> None:
    path = model_files.resnet(32)
    spec = step_spec(model={"path": str(path)}, batching={"maxBatchSize": 4, "preferredBatchSizes": [2]})
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    async with running_step(spec) as server:

        def call() -> tuple[bool, bool, bool, Any, np.ndarray]:
            client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
            try:
                metadata = client.get_model_metadata("classify", as_json=True)
                tensor = triton.InferInput("image", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                result = client.infer("classify", [tensor], outputs=[triton.InferRequestedOutput("logits")])
                return (
                    client.is_server_live(),
                    client.is_server_ready(),
                    client.is_model_ready("classify"),
                    metadata,
                    result.as_numpy("logits"),
                )
            finally:
                client.close()

        live, ready, model_ready, metadata, logits = await asyncio.to_thread(call)
    assert live and ready and model_ready
    assert metadata["name"] == "classify" and metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": ["-1", "3", "32", "32"]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": ["-1", "10"]}]
    np.testing.assert_allclose(logits, _reference(path, x), rtol=1e-4, atol=1e-5)


async def test_step_server_splits_large_client_batches_and_keeps_order(model_files: ModelFiles) -> None:
    path = model_files.resnet(32)
    spec = step_spec(model={"path": str(path)}, batching={"maxBatchSize": 4, "maxQueueDelayMicroseconds": 500})
    rng = np.random.default_rng(1)
    requests = [rng.random((rows, 3, 32, 32), dtype=np.float32) for rows in (11, 1, 2, 5, 3)]
    async with running_step(spec) as server, stub_for(server) as stub:
        responses = await asyncio.gather(*(stub.ModelInfer(_request(x)) for x in requests))
        assert server.op_loop is not None and server.op_loop.batcher is not None
        assert server.op_loop.batcher.stats.rows == sum(len(x) for x in requests)
    for x, response in zip(requests, responses):
        assert response.model_name == "classify" and response.id == "r1"
        np.testing.assert_allclose(decode_tensors(response)["logits"], _reference(path, x), rtol=1e-4, atol=1e-5)


async def test_step_server_health_metadata_and_model_names(model_files: ModelFiles) -> None:
    spec = step_spec(model={"path": str(model_files.resnet(32))})
    async with running_step(spec) as server, stub_for(server) as stub:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        try:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", SERVICE_NAME):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await channel.close()
        assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
        assert (await stub.ModelMetadata(pb.ModelMetadataRequest(name=""))).name == "classify"
        x = np.zeros((1, 3, 32, 32), np.float32)
        assert (await stub.ModelInfer(_request(x, model=""))).outputs[0].name == "logits"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ModelInfer(_request(x, model="other"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND



async def test_step_server_health_check_list_and_watch_end_when_it_stops() -> None:
    spec = step_spec("double", op="tests.support.step_fixtures:DoubleOp")
    server = create_step_server(spec)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        if hasattr(health_pb2, "HealthListRequest"):  # grpcio-health-checking 1.7x and later
            listed = await health.List(health_pb2.HealthListRequest())
            assert {name: r.status for name, r in listed.statuses.items()} == {
                "": health_pb2.HealthCheckResponse.SERVING,
                SERVICE_NAME: health_pb2.HealthCheckResponse.SERVING,
            }
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        await server.stop(grace=600)  # returns once the Watch has ended: nothing else is in flight
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await watch.read() is grpc.aio.EOF
        assert await watch.code() == grpc.StatusCode.OK
    finally:
        await server.stop()
        await channel.close()

def _bad(name: str, datatype: str, shape: list[int], raw: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="classify")
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return request


GOOD_RAW = bytes(3 * 32 * 32 * 4)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (_bad("image", "FP64", [1, 3, 32, 32], bytes(3 * 32 * 32 * 8)), "input 'image': datatype FP64, expected FP32"),
        (_bad("image", "FP32", [3, 32, 32], GOOD_RAW), "input 'image': shape [3,32,32] has rank 3, expected rank 4"),
        (_bad("image", "FP32", [1, 3, 32, 16], GOOD_RAW[: len(GOOD_RAW) // 2]), "input 'image': shape [1,3,32,16] has 16 in dimension 3"),
        (_bad("image", "FP32", [1, 3, 32, 32], GOOD_RAW[:-4]), "input 'image': FP32 shape [1, 3, 32, 32] needs 12288 bytes"),
        (_bad("pixels", "FP32", [1, 3, 32, 32], GOOD_RAW), "unknown input 'pixels'; step 'classify' expects 'image'"),
        (pb.ModelInferRequest(model_name="classify"), "missing input 'image'"),
        (_bad("image", "FP32", [40, 3, 32, 32], GOOD_RAW * 40), "input 'image': the request is 491555 bytes, over this step's limit of 262144"),
    ],
)
async def test_step_server_bad_input_fails_alone_with_invalid_argument(
    model_files: ModelFiles, request_: pb.ModelInferRequest, message: str
) -> None:
    spec = step_spec(model={"path": str(model_files.resnet(32))}, batching={"maxBatchSize": 8, "maxQueueDelayMicroseconds": 20000})
    good = np.ones((1, 3, 32, 32), np.float32)
    async with running_step(spec, max_message_bytes=256 * 1024) as server, stub_for(server) as stub:
        results = await asyncio.gather(
            stub.ModelInfer(_request(good)), stub.ModelInfer(request_), stub.ModelInfer(_request(good)), return_exceptions=True
        )
        error = results[1]
        assert isinstance(error, grpc.aio.AioRpcError)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (error.details() or ""), error.details()
        for ok in (results[0], results[2]):
            assert isinstance(ok, pb.ModelInferResponse)
        assert (await stub.ModelInfer(_request(good))).outputs[0].shape == [1, 10]


async def test_step_server_metrics_endpoint_reports_requests_and_batches(model_files: ModelFiles) -> None:
    spec = step_spec(model={"path": str(model_files.resnet(32))}, batching={"maxBatchSize": 2})
    async with running_step(spec, metrics_port=0) as server, stub_for(server) as stub:
        await stub.ModelInfer(_request(np.zeros((2, 3, 32, 32), np.float32)))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.ModelInfer(_request(np.zeros((1, 3, 32, 32), np.float64)))
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    assert 'conveyor_step_requests_total{code="OK",step="classify"} 1.0' in text
    assert 'conveyor_step_requests_total{code="INVALID_ARGUMENT",step="classify"} 1.0' in text
    assert 'conveyor_step_batches_total{reason="full",step="classify"} 1.0' in text
    assert 'conveyor_step_queue_depth{step="classify"} 0.0' in text
    assert "conveyor_step_compute_seconds_count" in text and "conveyor_step_queue_seconds_count" in text


def _counter(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))


@pytest.mark.skipif(cpu_count() < 2, reason="a batch computed alone gets more threads than an instance only with 2+ CPUs")
async def test_step_server_computes_a_lone_request_alone_on_every_thread_and_a_burst_side_by_side(
    model_files: ModelFiles,
) -> None:
    spec = step_spec(model={"path": str(model_files.resnet(32)), "instances": 2}, batching={"maxBatchSize": 2})
    x = np.random.default_rng(5).random((1, 3, 32, 32), dtype=np.float32)
    async with running_step(spec, metrics_port=0) as server, stub_for(server) as stub:
        lone = [await stub.ModelInfer(_request(x)) for _ in range(4)]
        burst = await asyncio.gather(*(stub.ModelInfer(_request(x)) for _ in range(16)))
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    alone, batches = _counter(text, "conveyor_step_alone_batches_total"), _counter(text, "conveyor_step_batches_total")
    assert alone >= 4, text  # each request of an idle step ran alone
    assert batches - alone >= 2, (alone, batches)  # a burst queues up: its batches compute side by side
    expected = decode_tensors(lone[0])["logits"]
    for response in [*lone, *burst]:  # both sessions compute the same answer
        np.testing.assert_allclose(decode_tensors(response)["logits"], expected, rtol=1e-4, atol=1e-5)


async def test_step_server_serves_fixed_batch_models_unbatched(model_files: ModelFiles) -> None:
    path = model_files.resnet(32, fixed_batch=2)
    async with running_step(step_spec(model={"path": str(path)}, batching={"maxBatchSize": 0})) as server, stub_for(server) as stub:
        x = np.random.default_rng(2).random((2, 3, 32, 32), dtype=np.float32)
        response = await stub.ModelInfer(_request(x))
        np.testing.assert_allclose(decode_tensors(response)["logits"], _reference(path, x), rtol=1e-4, atol=1e-5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ModelInfer(_request(x[:1]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "has 1 in batch dimension (0), expected 2" in (info.value.details() or "")


async def test_step_server_refuses_to_batch_a_fixed_batch_model(model_files: ModelFiles) -> None:
    path = model_files.resnet(32, fixed_batch=2)
    server = create_step_server(step_spec(model={"path": str(path)}, batching={"maxBatchSize": 8}))
    with pytest.raises(ModelLoadError, match="fixed batch dimension of 2"):
        await server.start()
    await server.stop()


async def test_step_server_builds_a_missing_model_relative_to_base_dir(tmp_path: Any) -> None:
    spec = step_spec(
        model={
            "path": "models/r.onnx",
            "build": "conveyor_examples.resnet:build",
            "buildArgs": {"depth": 18, "image_size": 32, "num_classes": 3},
        }
    )
    async with running_step(spec, base_dir=tmp_path) as server, stub_for(server) as stub:
        response = await stub.ModelInfer(_request(np.zeros((1, 3, 32, 32), np.float32)))
    assert (tmp_path / "models" / "r.onnx").exists()
    assert list(response.outputs[0].shape) == [1, 3]


async def test_step_server_checks_the_model_version_and_clips_echoed_names(model_files: ModelFiles) -> None:
    spec = step_spec(model={"path": str(model_files.resnet(32))}, batching={"maxBatchSize": 2})
    async with running_step(spec) as server, stub_for(server) as stub:
        x = np.zeros((1, 3, 32, 32), np.float32)
        for version in ("", "1"):
            request = _request(x)
            request.model_version = version
            assert (await stub.ModelInfer(request)).outputs[0].name == "logits"
        request = _request(x)
        request.model_version = "7"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ModelInfer(request)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "version '7'" in (info.value.details() or "")
        # a 10 KB name echoed into the error must not push the status over gRPC's metadata limit
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ModelInfer(_request(x, model="m" * 10_000))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert len(info.value.details() or "") <= 1100
