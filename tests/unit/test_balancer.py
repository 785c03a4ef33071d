"""The balancer over real loopback gRPC servers: least outstanding requests, health, retry on UNAVAILABLE."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from conveyor_runtime.errors import InvalidRequest, ModelNotReady, StepCallError
from conveyor_runtime.gateway import Balancer, StaticEndpoints
from conveyor_runtime.protocol import encode_tensors, pb
from tests.support.pipeline_fixtures import FakeStep, start_fake_step


def _request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="s")
    encode_tensors(request, [("x", np.zeros(1, np.float32))])
    return request


async def test_balancer_prefers_the_replica_with_fewer_outstanding_calls() -> None:
    release = asyncio.Event()

    async def maybe_stuck(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if arrays["x"][0] == 1:  # the one request that stays in flight
            await release.wait()
        return arrays

    steps = [await start_fake_step(FakeStep("s", maybe_stuck)) for _ in range(2)]
    balancer = Balancer("s", StaticEndpoints([s.address for s in steps]))
    await balancer.start()
    try:
        while not all(r.healthy for r in balancer.replicas.values()):
            await asyncio.sleep(0.01)
        stuck_request = pb.ModelInferRequest(model_name="s")
        encode_tensors(stuck_request, [("x", np.ones(1, np.float32))])
        stuck = asyncio.create_task(balancer.infer(stuck_request, None))
        await asyncio.wait_for(asyncio.wait([asyncio.create_task(s.servicer.entered.wait()) for s in steps],
                                            return_when=asyncio.FIRST_COMPLETED), 5)
        busy = next(s for s in steps if s.servicer.calls == 1)
        idle = next(s for s in steps if s is not busy)
        for _ in range(5):
            await balancer.infer(_request(), None)
        assert idle.servicer.calls == 5 and busy.servicer.calls == 1
        release.set()
        await stuck
        assert [r["served"] for r in balancer.snapshot()] in ([1, 5], [5, 1])
    finally:
        release.set()
        await balancer.aclose()
        for step in steps:
            await step.stop()


async def test_balancer_retries_unavailable_replicas_and_passes_other_errors_through() -> None:
    def unavailable(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise ModelNotReady("draining")

    def invalid(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise InvalidRequest("bad pixels")

    draining = await start_fake_step(FakeStep("s", unavailable))
    good = await start_fake_step(FakeStep("s", lambda arrays: {"y": arrays["x"] + 1}))
    balancer = Balancer("s", StaticEndpoints([draining.address, good.address]))
    await balancer.start()
    try:
        while not all(r.healthy for r in balancer.replicas.values()):
            await asyncio.sleep(0.01)
        for _ in range(6):
            await balancer.infer(_request(), time.monotonic() + 5)
        assert good.servicer.calls == 6
    finally:
        await balancer.aclose()
        await draining.stop()
        await good.stop()

    rejecting = await start_fake_step(FakeStep("s", invalid))
    balancer = Balancer("s", StaticEndpoints([rejecting.address]))
    await balancer.start()
    try:
        assert await balancer.wait_ready(5)
        with pytest.raises(StepCallError) as info:
            await balancer.infer(_request(), None)
        assert info.value.status == "INVALID_ARGUMENT" and info.value.message == "step 's': bad pixels"
        assert rejecting.servicer.calls == 1
    finally:
        await balancer.aclose()
        await rejecting.stop()


async def test_balancer_without_ready_replicas_fails_when_the_deadline_passes() -> None:
    step = await start_fake_step(FakeStep("s", lambda arrays: arrays), serving=False)
    balancer = Balancer("s", StaticEndpoints([step.address]), retry_backoff_s=0.05)
    await balancer.start()
    try:
        with pytest.raises(Exception) as info:
            await balancer.infer(_request(), time.monotonic() + 0.3)
        assert getattr(info.value, "status", "") == "DEADLINE_EXCEEDED"
        assert step.servicer.calls == 0
        await step.set_serving(True)
        assert await balancer.wait_ready(5)
        await balancer.infer(_request(), None)
        assert step.servicer.calls == 1
    finally:
        await balancer.aclose()
        await step.stop()
