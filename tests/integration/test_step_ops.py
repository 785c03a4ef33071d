"""Op steps over real gRPC: built-in vision ops, custom ops' own error codes, Skip, and deadlines before compute."""

from __future__ import annotations

import asyncio
import io

import grpc
import grpc.aio
import numpy as np
import pytest
import tritonclient.grpc as triton
from PIL import Image

from conveyor_examples import digits
from conveyor_runtime.protocol import decode_tensors, encode_tensors, pb
from tests.support import step_fixtures
from tests.support.step_fixtures import ModelFiles, model_files, running_step, step_spec, stub_for  # noqa: F401


def _request(name: str, x: np.ndarray, **parameters: bool) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest()
    encode_tensors(request, [(name, x)])
    for key, value in parameters.items():
        request.parameters[key].bool_param = value
    return request


async def _infer(stub: object, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    return decode_tensors(await stub.ModelInfer(_request(name, x)))  # type: ignore[attr-defined]


async def test_step_ops_digits_preprocess_model_topk_chain(model_files: ModelFiles) -> None:
    """The digits example's three steps, each a real server, chained by hand with renamed tensors."""
    _, _, images, labels = digits.load_split()
    names = [str(i) for i in range(10)]
    pre = step_spec("pre", op="image-preprocess", config={"size": 8, "grayscale": True})
    model = step_spec("model", model={"path": str(model_files.digits())})
    top = step_spec("top", op="topk", config={"k": 3, "labels": names})
    async with running_step(pre) as s1, running_step(model) as s2, running_step(top) as s3:
        async with stub_for(s1) as a, stub_for(s2) as b, stub_for(s3) as c:
            meta = await a.ModelMetadata(pb.ModelMetadataRequest(name="pre"))
            assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("image", "FP32", [-1, 1, 8, 8])]
            pixels = (await _infer(a, "pixels", images[:40]))["image"]
            logits = (await _infer(b, "image", pixels))["logits"]
            result = await _infer(c, "logits", logits)
    assert result["indices"].shape == (40, 3) and result["labels"].shape == (40, 3)
    assert (result["indices"][:, 0] == labels[:40]).mean() > 0.8
    assert [bytes(v).decode() for v in result["labels"][:, 0]] == [str(i) for i in result["indices"][:, 0]]


async def test_step_ops_preprocess_takes_png_bytes_from_tritonclient() -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 255, np.uint8)).save(buffer, format="PNG")
    data = np.array([buffer.getvalue(), b"garbage"], dtype=object)
    spec = step_spec("pre", op="image-preprocess", config={"size": 16, "resize": 16})
    async with running_step(spec) as server:

        def call(batch: np.ndarray) -> np.ndarray:
            client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
            try:
                tensor = triton.InferInput("image", [len(batch)], "BYTES")
                tensor.set_data_from_numpy(batch)
                return np.asarray(client.infer("pre", [tensor]).as_numpy("image"))
            finally:
                client.close()

        image = await asyncio.to_thread(call, data[:1])
        assert image.shape == (1, 3, 16, 16)
        np.testing.assert_allclose(image, 1.0)
        with pytest.raises(triton.InferenceServerException) as info:
            await asyncio.to_thread(call, data)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "[IMAGE_DECODE]" in (info.value.message() or "") and "row 1" in (info.value.message() or "")


async def test_step_ops_custom_error_code_reaches_the_client_and_others_carry_on() -> None:
    spec = step_spec("double", op="tests.support.step_fixtures:DoubleOp", batching={"maxQueueDelayMicroseconds": 5000})
    async with running_step(spec) as server, stub_for(server) as stub:
        good = np.ones((2, 2), np.float32)
        results = await asyncio.gather(
            stub.ModelInfer(_request("x", good)),
            stub.ModelInfer(_request("x", -good)),
            stub.ModelInfer(_request("x", good * 3)),
            stub.ModelInfer(_request("x", good, cached=True)),
            return_exceptions=True,
        )
    error = results[1]
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "[NEGATIVE] x must not be negative"
    assert isinstance(results[0], pb.ModelInferResponse) and isinstance(results[2], pb.ModelInferResponse)
    np.testing.assert_array_equal(decode_tensors(results[0])["y"], good * 2)
    np.testing.assert_array_equal(decode_tensors(results[2])["y"], good * 6)
    assert isinstance(results[3], pb.ModelInferResponse)
    np.testing.assert_array_equal(decode_tensors(results[3])["y"], good * 7)  # Skip: process never ran


async def test_step_ops_drop_expired_requests_before_compute() -> None:
    step_fixtures.GATE.clear()
    step_fixtures.GateOp.entered.clear()
    step_fixtures.GateOp.seen.clear()
    spec = step_spec("gate", op="tests.support.step_fixtures:GateOp", batching={"maxBatchSize": 4, "maxQueueDelayMicroseconds": 0})
    async with running_step(spec) as server, stub_for(server) as stub:
        try:
            first = asyncio.ensure_future(stub.ModelInfer(_request("x", np.full((1, 2), 1, np.float32))))
            assert await asyncio.to_thread(step_fixtures.GateOp.entered.wait, 30)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ModelInfer(_request("x", np.full((1, 2), 2, np.float32)), timeout=0.2)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            step_fixtures.GATE.set()
        assert (await first).outputs[0].name == "y"
        third = await _infer(stub, "x", np.full((1, 2), 3, np.float32))
    np.testing.assert_array_equal(third["y"], np.full((1, 2), 6))
    assert step_fixtures.GateOp.seen == [[1.0], [3.0]]  # the expired request never reached compute
