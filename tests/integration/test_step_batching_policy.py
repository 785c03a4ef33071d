"""Batching policies on a step served over real gRPC: work-conserving sends at once when an instance is idle and
fills batches while it is busy; fill waits for a full batch. Real ONNX Runtime where the model matters."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort

from conveyor_runtime.protocol import decode_tensors, encode_tensors, pb
from conveyor_runtime.step import StepServer
from tests.support import step_fixtures
from tests.support.step_fixtures import ModelFiles, model_files, running_step, step_spec, stub_for  # noqa: F401

#: The longest queue delay a manifest allows (10 s): a test that waited it out would show as reason "timeout".
LONG_DELAY_US = 10_000_000


def _request(name: str, x: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="s")
    encode_tensors(request, [(name, x)])
    return request


def _reasons(server: StepServer) -> dict[str, int]:
    assert server.op_loop is not None and server.op_loop.batcher is not None
    return dict(server.op_loop.batcher.stats.reasons)


async def test_batching_policy_work_conserving_answers_a_lone_request_at_once(model_files: ModelFiles) -> None:
    path = model_files.resnet(32)
    batching = {"maxBatchSize": 8, "maxQueueDelayMicroseconds": LONG_DELAY_US}
    spec = step_spec("s", model={"path": str(path)}, batching=batching)
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    async with running_step(spec) as server, stub_for(server) as stub:
        response = await stub.ModelInfer(_request("image", x), timeout=60)
        assert _reasons(server) == {"idle": 1}  # sent by an idle instance, not after the 10 s delay
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"image": x})[0]
    np.testing.assert_allclose(decode_tensors(response)["logits"], expected, rtol=1e-4, atol=1e-5)


async def test_batching_policy_fill_waits_for_a_full_batch(model_files: ModelFiles) -> None:
    batching = {"maxBatchSize": 4, "maxQueueDelayMicroseconds": LONG_DELAY_US, "policy": "fill"}
    spec = step_spec("s", model={"path": str(model_files.resnet(32))}, batching=batching)
    rng = np.random.default_rng(1)
    async with running_step(spec) as server, stub_for(server) as stub:
        first = asyncio.ensure_future(stub.ModelInfer(_request("image", rng.random((1, 3, 32, 32), dtype=np.float32))))
        while server.op_loop is not None and server.op_loop.batcher is not None and not server.op_loop.batcher.queued_rows:
            await asyncio.sleep(0.01)  # the first request is queued, with an idle instance
        rest = [stub.ModelInfer(_request("image", rng.random((1, 3, 32, 32), dtype=np.float32))) for _ in range(3)]
        await asyncio.wait_for(asyncio.gather(first, *rest), 60)
        assert _reasons(server) == {"full": 1}


async def test_batching_policy_work_conserving_fills_batches_while_the_instance_is_busy() -> None:
    step_fixtures.GATE.clear()
    step_fixtures.GateOp.entered.clear()
    step_fixtures.GateOp.seen.clear()
    batching = {"maxBatchSize": 8, "maxQueueDelayMicroseconds": LONG_DELAY_US}
    spec = step_spec("s", op="tests.support.step_fixtures:GateOp", batching=batching)
    async with running_step(spec) as server, stub_for(server) as stub:
        assert server.op_loop is not None and server.op_loop.batcher is not None
        batcher = server.op_loop.batcher
        try:
            first = asyncio.ensure_future(stub.ModelInfer(_request("x", np.full((1, 2), 0, np.float32))))
            assert await asyncio.to_thread(step_fixtures.GateOp.entered.wait, 30)  # the one instance is busy
            rest = [
                asyncio.ensure_future(stub.ModelInfer(_request("x", np.full((1, 2), i, np.float32)))) for i in range(1, 9)
            ]
            while batcher.queued_rows < 8:
                await asyncio.sleep(0.01)
        finally:
            step_fixtures.GATE.set()
        responses = await asyncio.wait_for(asyncio.gather(first, *rest), 60)
        assert _reasons(server) == {"idle": 1, "full": 1}
    assert step_fixtures.GateOp.seen == [[0.0], [float(i) for i in range(1, 9)]]
    for i, response in enumerate(responses):
        np.testing.assert_array_equal(decode_tensors(response)["y"], np.full((1, 2), 2 * i))
