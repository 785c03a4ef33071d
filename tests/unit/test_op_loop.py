"""The op loop's setup: thread pools sized from the step's CPU budget, batching settings that an op cannot use."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conveyor_runtime import Arrays, RequestContext, Skip
from conveyor_runtime.errors import InvalidManifest, QueueFull
from conveyor_runtime.ops import load_op
from conveyor_runtime.protocol import decode_tensors, encode_tensors, pb
from conveyor_runtime.step import CpuBudget, OpLoop, StepMetrics, ignored_batching
from tests.support.step_fixtures import GATE, DoubleOp, GateOp, step_spec

PER_REQUEST = "tests.support.unbatched_ops:PerRequestOnlyOp"
ONE_AT_A_TIME = "tests.support.unbatched_ops:OneAtATimeOp"
DOUBLE = "tests.support.step_fixtures:DoubleOp"
GATE_OP = "tests.support.step_fixtures:GateOp"


def _load(tmp_path: Path, **fields: Any) -> OpLoop:
    spec = step_spec("s", **fields)
    return OpLoop.load(spec, tmp_path, StepMetrics(spec.name))


def test_op_loop_sizes_hook_threads_from_the_cpu_budget() -> None:
    spec = step_spec("s", op=DOUBLE)
    op = load_op(DOUBLE)()
    assert OpLoop(spec, op, StepMetrics("s"), cpus=CpuBudget(5, "test")).hook_threads == 5
    assert OpLoop(spec, op, StepMetrics("s"), cpus=CpuBudget(1, "test")).hook_threads == 2  # pre and post may overlap


def test_op_loop_takes_its_cpu_budget_from_resources_cpu_and_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    loop = _load(tmp_path, op=DOUBLE, resources={"cpu": "500m"})
    assert loop.cpus == CpuBudget(1, "resources.cpu '500m' (at least 1)")
    assert "step s: sizing threads for 1 CPU(s): resources.cpu '500m' (at least 1)" in caplog.text


@pytest.mark.parametrize(
    ("op", "batching", "paths"),
    [
        (PER_REQUEST, {}, []),
        (PER_REQUEST, {"maxBatchSize": 0}, []),  # says what happens anyway
        (PER_REQUEST, {"maxBatchSize": 16}, ["batching.maxBatchSize"]),
        (PER_REQUEST, {"maxQueueSize": 10, "maxConcurrentBatches": 2}, ["batching.maxQueueSize", "batching.maxConcurrentBatches"]),
        (PER_REQUEST, {"preferredBatchSizes": [2], "maxQueueDelayMicroseconds": 5}, ["batching.maxQueueDelayMicroseconds", "batching.preferredBatchSizes"]),
        ("identity", {"maxBatchSize": 4}, ["batching.maxBatchSize"]),
        (ONE_AT_A_TIME, {"maxQueueSize": 10, "maxConcurrentBatches": 2, "maxBatchSize": 0}, []),  # the queue is real
        (ONE_AT_A_TIME, {"maxBatchSize": 4, "preferredBatchSizes": [2]}, ["batching.maxBatchSize", "batching.preferredBatchSizes"]),
        (ONE_AT_A_TIME, {"maxQueueDelayMicroseconds": 50}, ["batching.maxQueueDelayMicroseconds"]),
        (DOUBLE, {"maxBatchSize": 16, "preferredBatchSizes": [4], "maxQueueDelayMicroseconds": 5, "maxQueueSize": 9}, []),
    ],
)
def test_op_loop_ignored_batching_names_each_setting_the_op_cannot_use(
    op: str, batching: dict[str, Any], paths: list[str]
) -> None:
    spec = step_spec("s", op=op, batching=batching)
    assert [e.path for e in ignored_batching(spec, load_op(op))] == paths


def test_op_loop_refuses_batching_on_an_op_without_a_batch_step(tmp_path: Path) -> None:
    with pytest.raises(InvalidManifest, match=r"spec\.steps\[3\]\.batching\.maxBatchSize: .*no batch step.*remove it") as info:
        OpLoop.load(
            step_spec("s", op=PER_REQUEST, batching={"maxBatchSize": 16}), tmp_path, StepMetrics("s"), where="spec.steps[3]"
        )
    assert [e.path for e in info.value.errors] == ["spec.steps[3].batching.maxBatchSize"]
    with pytest.raises(InvalidManifest, match=r"step\.batching\.maxBatchSize"):
        _load(tmp_path, op=PER_REQUEST, batching={"maxBatchSize": 16})


class _CountingGateOp(GateOp):
    """GateOp that counts the requests it preprocessed."""

    preprocessed = 0

    def preprocess(self, inputs: Arrays, request: RequestContext) -> Arrays | Skip:
        self.preprocessed += 1
        return super().preprocess(inputs, request)


def _request(value: float) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="s")
    encode_tensors(request, [("x", np.full((1, 2), value, np.float32))])
    return request


async def test_op_loop_refuses_a_request_to_a_full_queue_before_decoding_or_preprocessing() -> None:
    GATE.clear()
    GateOp.entered.clear()
    spec = step_spec(
        "s", op=GATE_OP, batching={"maxBatchSize": 1, "maxQueueDelayMicroseconds": 0, "maxQueueSize": 1}
    )
    op = _CountingGateOp()
    loop = OpLoop(spec, op, StepMetrics("s"), cpus=CpuBudget(2, "test"))
    await loop.start()
    held: list[asyncio.Future[pb.ModelInferResponse]] = []
    try:
        held.append(asyncio.ensure_future(loop.infer(_request(1.0))))  # computing, held by the gate
        assert await asyncio.to_thread(GateOp.entered.wait, 30)
        held.append(asyncio.ensure_future(loop.infer(_request(2.0))))  # queued: the one row of room is taken
        assert loop.batcher is not None
        while loop.batcher.queued_rows < 1:
            await asyncio.sleep(0.01)
        assert op.preprocessed == 2
        with pytest.raises(QueueFull):
            await loop.infer(_request(3.0))
        assert op.preprocessed == 2, "a refused request must cost no preprocessing"
    finally:
        GATE.set()
        await asyncio.gather(*held, return_exceptions=True)
        await loop.aclose()
    assert [decode_tensors(f.result())["y"][0, 0] for f in held] == [2.0, 4.0]


class _ThreadRecordingDoubleOp(DoubleOp):
    """DoubleOp that notes which thread each `process` call ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def process(self, batch: Arrays) -> Arrays:
        self.threads.append(threading.get_ident())
        return super().process(batch)


async def test_a_trivial_process_moves_onto_the_event_loop_once_it_has_proven_short() -> None:
    spec = step_spec("s", op=DOUBLE, batching={"maxBatchSize": 4, "maxQueueDelayMicroseconds": 0})
    op = _ThreadRecordingDoubleOp()
    loop = OpLoop(spec, op, StepMetrics("s"), cpus=CpuBudget(2, "test"))
    await loop.start()
    try:
        for value in range(40):
            response = await loop.infer(_request(float(value)))
            assert decode_tensors(response)["y"][0, 0] == 2.0 * value
    finally:
        await loop.aclose()
    here = threading.get_ident()
    assert op.threads[0] != here, "an unmeasured process starts on a compute thread"
    assert op.threads[-1] == here, "a process that took microseconds 16 times runs on the event loop: no thread hop"
