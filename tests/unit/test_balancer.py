"""The balancer over real loopback gRPC servers: least outstanding requests, health, retry on UNAVAILABLE,
full queues (another replica, then RESOURCE_EXHAUSTED) and the default timeout."""

from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np
import pytest

from conveyor_runtime.errors import InvalidRequest, ModelNotReady, QueueFull, StepCallError
from conveyor_runtime.gateway import Balancer, Replica, StaticEndpoints
from conveyor_runtime.protocol import encode_tensors, pb
from tests.support.pipeline_fixtures import FakeStep, ListedEndpoints, eventually, start_fake_step


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


def _queue_full(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    raise QueueFull("queue is full (4 of 4 rows queued); retry later")


async def _started(balancer: Balancer) -> Balancer:
    await balancer.start()
    for _ in range(500):
        if all(r.healthy for r in balancer.replicas.values()):
            return balancer
        await asyncio.sleep(0.01)
    raise AssertionError(f"replicas never became healthy: {balancer.snapshot()}")


async def test_balancer_sends_a_call_refused_for_a_full_queue_to_a_replica_with_room() -> None:
    release = asyncio.Event()

    async def held_or_add(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if arrays["x"][0] == 1:
            await release.wait()
        return {"y": arrays["x"] + 1}

    full = await start_fake_step(FakeStep("s", _queue_full))
    roomy = await start_fake_step(FakeStep("s", held_or_add))
    balancer = await _started(Balancer("s", StaticEndpoints([full.address, roomy.address])))
    try:
        held_request = pb.ModelInferRequest(model_name="s")
        encode_tensors(held_request, [("x", np.ones(1, np.float32))])
        held = asyncio.create_task(balancer.infer(held_request, time.monotonic() + 30))
        await asyncio.wait_for(roomy.servicer.entered.wait(), 10)
        # `roomy` now holds a call, so the idle `full` replica is asked first unless it already said it is full
        answer = await balancer.infer(_request(), time.monotonic() + 30)
        assert answer.outputs[0].name == "y"
        assert full.servicer.calls == 1 and roomy.servicer.calls == 2
        release.set()
        await held
    finally:
        release.set()
        await balancer.aclose()
        await full.stop()
        await roomy.stop()


async def test_balancer_returns_resource_exhausted_only_when_every_replica_is_full() -> None:
    steps = [await start_fake_step(FakeStep("s", _queue_full)) for _ in range(3)]
    balancer = await _started(Balancer("s", StaticEndpoints([s.address for s in steps])))
    try:
        with pytest.raises(StepCallError) as info:
            await asyncio.wait_for(balancer.infer(_request(), time.monotonic() + 30), 10)
        assert info.value.status == "RESOURCE_EXHAUSTED" and "queue is full" in info.value.message
        assert [s.servicer.calls for s in steps] == [1, 1, 1], "each replica is asked once, none twice"
    finally:
        await balancer.aclose()
        for step in steps:
            await step.stop()


async def test_balancer_refuses_at_once_while_every_replica_is_known_full_then_asks_again() -> None:
    accept = [False]

    def full_until_told(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not accept[0]:
            _queue_full(arrays)
        return {"y": arrays["x"]}

    step = await start_fake_step(FakeStep("s", full_until_told))
    balancer = await _started(Balancer("s", StaticEndpoints([step.address]), full_memory_s=0.2))
    try:
        with pytest.raises(StepCallError):
            await balancer.infer(_request(), time.monotonic() + 30)
        assert step.servicer.calls == 1
        with pytest.raises(StepCallError) as info:
            await balancer.infer(_request(), time.monotonic() + 30)
        assert info.value.status == "RESOURCE_EXHAUSTED" and "full" in info.value.message
        assert step.servicer.calls == 1, "a replica that just said it is full is not asked again at once"
        accept[0] = True
        end = time.monotonic() + 10
        while step.servicer.calls == 1 and time.monotonic() < end:
            with contextlib.suppress(StepCallError):
                await balancer.infer(_request(), time.monotonic() + 30)
            await asyncio.sleep(0.02)
        assert step.servicer.calls == 2, "after full_memory_s the replica is asked again"
    finally:
        await balancer.aclose()
        await step.stop()


async def test_balancer_call_without_a_deadline_carries_the_default_timeout() -> None:
    never = asyncio.Event()

    async def hang(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        await never.wait()
        return arrays

    step = await start_fake_step(FakeStep("s", hang))
    balancer = await _started(Balancer("s", StaticEndpoints([step.address]), default_timeout_s=0.5))
    try:
        with pytest.raises(StepCallError) as info:
            await asyncio.wait_for(balancer.infer(_request(), None), 10)
        assert info.value.status == "DEADLINE_EXCEEDED"
        (remaining,) = step.servicer.deadlines
        assert remaining is not None and 0 < remaining <= 0.55
    finally:
        never.set()
        await balancer.aclose()
        await step.stop()


def test_replica_room_trusts_a_full_answer_then_lets_one_call_find_out_then_forgets() -> None:
    replica = Replica(address="a:1", channel=None, stub=None)  # type: ignore[arg-type]  # room() uses neither
    assert replica.room(100.0, 1.0) is None
    replica.outstanding = 3
    replica.learn_full(100.0, holding=3)
    assert replica.room(100.5, 1.0) == 0
    replica.outstanding = 2
    assert replica.room(100.5, 1.0) == 1, "a call that ends frees its place"
    replica.outstanding = 3
    assert replica.room(101.5, 1.0) == 1, "after memory_s, one call more than it held may go"
    assert replica.room(102.5, 1.0) is None and replica.limit is None, "after twice memory_s, forgotten"


async def _metadata_names(balancer: Balancer) -> list[str]:
    meta = await balancer.metadata()
    assert meta is not None
    return [t.name for t in meta.inputs]


async def test_balancer_metadata_follows_replicas_replaced_with_a_new_model() -> None:
    old = await start_fake_step(FakeStep("s", lambda a: a, inputs=[("x", "FP32")]))
    new = await start_fake_step(FakeStep("s", lambda a: a, inputs=[("pixels", "UINT8")]))
    source = ListedEndpoints([old.address])
    balancer = await _started(Balancer("s", source))
    try:
        await eventually(lambda: balancer.ready, 5.0)  # the first resolve comes from the watcher
        assert await _metadata_names(balancer) == ["x"]
        source.addresses = [new.address]  # a rollout: the old pod leaves, a pod with the new model comes
        await eventually(lambda: list(balancer.replicas) == [new.address] and balancer.ready, 5.0)
        assert await _metadata_names(balancer) == ["pixels"]
    finally:
        await balancer.aclose()
        await old.stop()
        await new.stop()


async def test_balancer_metadata_is_asked_again_when_a_replica_comes_back_ready() -> None:
    step = await start_fake_step(FakeStep("s", lambda a: a, inputs=[("x", "FP32")]))
    balancer = await _started(Balancer("s", StaticEndpoints([step.address]), retry_backoff_s=0.01))
    try:
        assert await _metadata_names(balancer) == ["x"]
        await step.set_serving(False)  # the same address restarts with another model
        step.servicer.inputs = [("pixels", "UINT8")]
        await eventually(lambda: not balancer.ready, 5.0)
        await step.set_serving(True)
        await eventually(lambda: balancer.ready, 5.0)
        assert await _metadata_names(balancer) == ["pixels"]
    finally:
        await balancer.aclose()
        await step.stop()
