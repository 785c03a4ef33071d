"""`conveyor step` as a real process: spec from the environment, SERVING, then SIGTERM drains and exits 0.

SIGTERM: NOT_SERVING at once, calls still accepted for `--pre-stop-delay`, health Watch streams ended, then the
process exits as soon as in-flight work is done (`--grace` is only the upper bound). A dead batcher exits 1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conveyor_runtime.protocol import InferenceStub, decode_tensors, encode_tensors, pb
from conveyor_runtime.serving import free_port
from conveyor_runtime.spec import StepSpec, step_to_env
from tests.support.step_fixtures import step_spec

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: Far longer than any drain here: a test that waited for it would hit the pytest-level bounds below instead.
LONG_S = 3600
#: Liveness bounds (not speed assertions): what a step that works needs is a small fraction of these.
BOUND_S = 60

#: Runs `conveyor` with the batcher's decision function failing once requests are queued (a dead batcher).
BROKEN_BATCHER = """
import sys
import conveyor_runtime.step.batcher as batcher
real = batcher.form_batch
def broken(queue, **kwargs):
    if queue:
        raise RuntimeError("injected fault in form_batch")
    return real(queue, **kwargs)
batcher.form_batch = broken
from conveyor_runtime.cli import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class StepProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    health: health_pb2_grpc.HealthStub
    stub: InferenceStub

    async def wait_serving(self) -> None:
        give_up = time.monotonic() + BOUND_S
        while time.monotonic() < give_up:
            assert self.process.poll() is None, f"the step process exited before SERVING:\n{self.log.read_text()}"
            try:
                reply = await self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError("the step did not report SERVING in time")

    async def exit_code(self) -> int:
        return await asyncio.to_thread(self.process.wait, BOUND_S)


@asynccontextmanager
async def step_process(
    spec: StepSpec, tmp_path: Path, *flags: str, launcher: Sequence[str] = ("-m", "conveyor_runtime.cli")
) -> AsyncIterator[StepProcess]:
    """`conveyor step` in a child process, spec in its environment; SERVING on entry, killed on exit if still alive."""
    port = free_port()
    env = {**os.environ, **step_to_env(spec), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    log = tmp_path / "step.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, *launcher, "step", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0", *flags],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        step = StepProcess(process, port, log, health_pb2_grpc.HealthStub(channel), InferenceStub(channel))
        await step.wait_serving()
        yield step
    finally:
        await channel.close()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


async def _wait_file(path: Path) -> None:
    give_up = time.monotonic() + BOUND_S
    while not path.exists():
        assert time.monotonic() < give_up, f"{path} never appeared"
        await asyncio.sleep(0.02)


def _request(value: float) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest()
    encode_tensors(request, [("x", np.full((1, 2), value, np.float32))])
    return request


def _slow_spec(marker: Path) -> StepSpec:
    return step_spec(
        "slow",
        op="tests.support.step_fixtures:SlowOp",
        config={"marker": str(marker), "delay": 1.0},
        batching={"maxBatchSize": 1},
    )


async def test_step_command_sigterm_goes_not_serving_drains_and_exits_zero(tmp_path: Path) -> None:
    marker = tmp_path / "computing"
    async with step_process(_slow_spec(marker), tmp_path, "--grace", "20", "--pre-stop-delay", "0") as step:
        watch = step.health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == SERVING
        requests = [asyncio.ensure_future(step.stub.ModelInfer(_request(value), timeout=60)) for value in (1.0, 2.0)]
        await _wait_file(marker)  # the first request is computing, the second is queued
        step.process.send_signal(signal.SIGTERM)
        update = await asyncio.wait_for(watch.read(), timeout=10)
        assert update.status == NOT_SERVING
        watch.cancel()
        assert not all(r.done() for r in requests)  # readiness dropped before the work was done
        responses = await asyncio.gather(*requests)
        for value, response in zip((1.0, 2.0), responses):
            np.testing.assert_array_equal(decode_tensors(response)["y"], np.full((1, 2), 2 * value))
        assert await step.exit_code() == 0
    text = step.log.read_text()
    assert f"step slow SERVING on 127.0.0.1:{step.port} (provider python" in text
    assert "SIGTERM received" in text


async def test_step_command_sigterm_ends_health_watches_and_exits_once_work_is_done(tmp_path: Path) -> None:
    """An open Watch stream (the gateway keeps one per replica) must not hold the drain to the grace period."""
    marker = tmp_path / "computing"
    async with step_process(_slow_spec(marker), tmp_path, "--grace", str(LONG_S), "--pre-stop-delay", "0") as step:
        watch = step.health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == SERVING
        computing = asyncio.ensure_future(step.stub.ModelInfer(_request(3.0), timeout=BOUND_S))
        await _wait_file(marker)
        step.process.send_signal(signal.SIGTERM)
        assert (await asyncio.wait_for(watch.read(), BOUND_S)).status == NOT_SERVING
        assert await asyncio.wait_for(watch.read(), BOUND_S) is grpc.aio.EOF  # the step ended the stream itself
        assert await watch.code() == grpc.StatusCode.OK
        np.testing.assert_array_equal(decode_tensors(await computing)["y"], np.full((1, 2), 6.0))
        assert await step.exit_code() == 0  # long before the grace period of an hour
    assert "drained" in step.log.read_text()


async def test_step_command_keeps_answering_calls_during_the_pre_stop_delay(tmp_path: Path) -> None:
    """After SIGTERM the endpoints still list the pod for a while: it says NOT_SERVING but still answers."""
    spec = step_spec("double", op="tests.support.step_fixtures:DoubleOp")
    async with step_process(spec, tmp_path, "--grace", str(LONG_S), "--pre-stop-delay", str(LONG_S)) as step:
        watch = step.health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == SERVING
        step.process.send_signal(signal.SIGTERM)
        assert (await asyncio.wait_for(watch.read(), BOUND_S)).status == NOT_SERVING
        assert (await step.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=BOUND_S)).status == NOT_SERVING
        response = await step.stub.ModelInfer(_request(4.0), timeout=BOUND_S)
        np.testing.assert_array_equal(decode_tensors(response)["y"], np.full((1, 2), 8.0))
        assert step.process.poll() is None
        step.process.send_signal(signal.SIGTERM)  # a second signal cuts the pre-stop delay short
        assert await step.exit_code() == 0
    text = step.log.read_text()
    assert "pre-stop" in text
    assert "second SIGTERM" in text


async def test_step_command_dead_batcher_goes_not_serving_and_exits_non_zero(tmp_path: Path) -> None:
    spec = step_spec("double", op="tests.support.step_fixtures:DoubleOp")
    async with step_process(spec, tmp_path, "--pre-stop-delay", str(LONG_S), launcher=("-c", BROKEN_BATCHER)) as step:
        watch = step.health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await step.stub.ModelInfer(_request(1.0), timeout=BOUND_S)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # never computed: safe to retry elsewhere
        assert (await asyncio.wait_for(watch.read(), BOUND_S)).status == NOT_SERVING
        assert await step.exit_code() == 1  # no pre-stop delay: a broken replica has nothing to offer
    text = step.log.read_text()
    assert "injected fault in form_batch" in text
    assert "the batcher stopped" in text
