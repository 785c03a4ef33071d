"""`conveyor step` as a real process: spec from the environment, SERVING, then SIGTERM drains and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conveyor_runtime.protocol import InferenceStub, decode_tensors, encode_tensors, pb
from conveyor_runtime.serving import free_port
from conveyor_runtime.spec import step_to_env
from tests.support.step_fixtures import step_spec


async def _wait_serving(health: health_pb2_grpc.HealthStub, process: subprocess.Popen[bytes], limit_s: float = 60) -> None:
    give_up = time.monotonic() + limit_s
    while time.monotonic() < give_up:
        assert process.poll() is None, "the step process exited before SERVING"
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the step did not report SERVING in time")


async def _wait_file(path: Path, limit_s: float = 30) -> None:
    give_up = time.monotonic() + limit_s
    while not path.exists():
        assert time.monotonic() < give_up, f"{path} never appeared"
        await asyncio.sleep(0.02)


async def test_step_command_sigterm_goes_not_serving_drains_and_exits_zero(tmp_path: Path) -> None:
    marker = tmp_path / "computing"
    spec = step_spec(
        "slow",
        op="tests.support.step_fixtures:SlowOp",
        config={"marker": str(marker), "delay": 1.0},
        batching={"maxBatchSize": 1},
    )
    port = free_port()
    env = {**os.environ, **step_to_env(spec), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    log = tmp_path / "step.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "conveyor_runtime.cli", "step", "--host", "127.0.0.1", "--port", str(port),
             "--metrics-port", "0", "--grace", "20"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        await _wait_serving(health, process)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        stub = InferenceStub(channel)
        requests = []
        for value in (1.0, 2.0):
            request = pb.ModelInferRequest()
            encode_tensors(request, [("x", np.full((1, 2), value, np.float32))])
            requests.append(asyncio.ensure_future(stub.ModelInfer(request, timeout=60)))
        await _wait_file(marker)  # the first request is computing, the second is queued
        process.send_signal(signal.SIGTERM)
        update = await asyncio.wait_for(watch.read(), timeout=10)
        assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        assert not all(r.done() for r in requests)  # readiness dropped before the work was done
        responses = await asyncio.gather(*requests)
        for value, response in zip((1.0, 2.0), responses):
            np.testing.assert_array_equal(decode_tensors(response)["y"], np.full((1, 2), 2 * value))
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        await channel.close()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    text = log.read_text()
    assert f"step slow SERVING on 127.0.0.1:{port} (provider python" in text
    assert "SIGTERM received" in text
