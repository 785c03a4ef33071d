"""Step calls as messages on call streams (`protocol.call_stream`), over real gRPC on loopback: answers matched
to their callers, deadlines and cancellation reaching the step, the step's call limit, drain, broken streams
retried elsewhere, steps without streams called unary, large requests unary."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import numpy as np
import pytest

from conveyor_runtime.errors import InvalidRequest, StepCallError
from conveyor_runtime.gateway import Balancer, StaticEndpoints
from conveyor_runtime.protocol import decode_tensors, encode_tensors, pb
from conveyor_runtime.protocol.call_stream import MAX_STREAMED_REQUEST_BYTES
from conveyor_runtime.routing import CHANNEL_OPTIONS, CallStream
from conveyor_runtime.step.call_streams import CallStreams
from tests.support.pipeline_fixtures import FakeStep, ListedEndpoints, RunningStep, eventually, start_fake_step


def _request(value: float, size: int = 1) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="s")
    encode_tensors(request, [("x", np.full(size, value, np.float32))])
    return request


def _value(response: pb.ModelInferResponse) -> float:
    return float(decode_tensors(response)["y"][0])


class Held:
    """A step function that waits until released, noting the calls that were cancelled while they waited."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = 0
        self.cancelled = 0

    async def __call__(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.waiting += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.waiting -= 1
        return {"y": arrays["x"] + 1}


def _add_one(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"y": arrays["x"] + 1}


@contextlib.asynccontextmanager
async def streaming_to(step: RunningStep) -> AsyncIterator[CallStream]:
    """A call stream to `step`; closed, with its channel and the step, at the end."""
    channel = grpc.aio.insecure_channel(step.address, options=CHANNEL_OPTIONS)
    stream = CallStream(channel, step.address)
    try:
        yield stream
    finally:
        await stream.aclose()
        await channel.close()
        await step.stop()


async def test_concurrent_calls_on_one_stream_each_get_their_own_answer() -> None:
    async def jittered(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        await asyncio.sleep(float(np.random.uniform(0, 0.01)))  # answers come back out of order
        return _add_one(arrays)

    step = await start_fake_step(FakeStep("s", jittered))
    async with streaming_to(step) as stream:
        answers = await asyncio.gather(*(stream.call(_request(float(i)), 10.0) for i in range(300)))
        assert [_value(a) for a in answers] == [i + 1.0 for i in range(300)]
        assert step.call_streams is not None and step.call_streams.taken == 300
        assert step.servicer.calls == 300


async def test_a_streamed_call_past_its_timeout_fails_deadline_exceeded_and_is_cancelled_on_the_step() -> None:
    held = Held()
    step = await start_fake_step(FakeStep("s", held))
    async with streaming_to(step) as stream:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.call(_request(1.0), 0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(lambda: held.cancelled == 1, 5, "the step to stop working on the expired call")
        assert step.call_streams is not None
        await eventually(lambda: step.call_streams.in_flight == 0, 5, "the step to count the call as done")
        held.release.set()
        assert _value(await stream.call(_request(2.0), 5.0)) == 3.0, "the stream carries on after a call expired"


async def test_a_call_its_caller_gives_up_is_cancelled_on_the_step_and_the_others_carry_on() -> None:
    held = Held()
    step = await start_fake_step(FakeStep("s", held))
    async with streaming_to(step) as stream:
        given_up = stream.call(_request(1.0), 30.0)
        kept = stream.call(_request(2.0), 30.0)
        await eventually(lambda: held.waiting == 2, 5, "both calls to reach the step")
        given_up.cancel()
        await eventually(lambda: held.cancelled == 1, 5, "the step to cancel the call its caller gave up")
        held.release.set()
        assert _value(await kept) == 3.0


async def test_calls_over_the_steps_limit_are_refused_resource_exhausted_while_the_rest_are_answered() -> None:
    held = Held()
    step = await start_fake_step(FakeStep("s", held))
    assert step.call_streams is not None
    step.call_streams.max_calls = 2
    async with streaming_to(step) as stream:
        first, second = stream.call(_request(1.0), 30.0), stream.call(_request(2.0), 30.0)
        await eventually(lambda: held.waiting == 2, 5, "two calls to be held by the step")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.call(_request(3.0), 30.0)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit" in (info.value.details() or "")
        held.release.set()
        assert [_value(await first), _value(await second)] == [2.0, 3.0]


async def test_failures_on_a_stream_keep_their_status_and_reason() -> None:
    def refuse(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise InvalidRequest("input 'x': expected 3 values, got 1")

    step = await start_fake_step(FakeStep("s", refuse))
    balancer = Balancer("s", StaticEndpoints([step.address]))
    await balancer.start()
    try:
        assert await balancer.wait_ready(10)
        with pytest.raises(StepCallError) as info:
            await balancer.infer(_request(1.0), time.monotonic() + 10)
        assert info.value.status == "INVALID_ARGUMENT" and "expected 3 values" in info.value.message
        assert step.call_streams is not None and step.call_streams.taken == 1, "the call went on the stream"
    finally:
        await balancer.aclose()
        await step.stop()


async def test_a_draining_step_refuses_new_streamed_calls_and_ends_its_streams_once_their_calls_are_answered() -> None:
    held = Held()
    step = await start_fake_step(FakeStep("s", held))
    assert step.call_streams is not None
    async with streaming_to(step) as stream:
        in_flight = stream.call(_request(1.0), 30.0)
        await eventually(lambda: held.waiting == 1, 5, "the call to reach the step")
        step.call_streams.drain()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.call(_request(2.0), 30.0)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, "a new call goes to another replica"
        stopping = asyncio.ensure_future(step.server.stop(60))
        held.release.set()
        assert _value(await in_flight) == 2.0, "the call in flight is answered"
        await asyncio.wait_for(stopping, 30)  # the stream ended: the server's stop does not wait out its grace
        assert stream.pending == 0


async def test_calls_on_a_stream_whose_replica_went_away_are_retried_on_another_replica() -> None:
    held = Held()
    gone = await start_fake_step(FakeStep("s", held))
    other = await start_fake_step(FakeStep("s", _add_one))
    source = ListedEndpoints([gone.address])
    balancer = Balancer("s", source)
    await balancer.start()
    try:
        assert await balancer.wait_ready(10)
        call = asyncio.ensure_future(balancer.infer(_request(4.0), time.monotonic() + 30))
        await eventually(lambda: held.waiting == 1, 5, "the call to reach the first replica")
        source.addresses = [gone.address, other.address]
        await eventually(lambda: sum(r["healthy"] for r in balancer.snapshot()) == 2, 10, "the second replica in rotation")
        await gone.server.stop(None)  # cancels the stream with the call on it
        assert _value(await asyncio.wait_for(call, 20)) == 5.0
        assert other.servicer.calls == 1
    finally:
        await balancer.aclose()
        await gone.stop()
        await other.stop()


async def test_a_replica_without_call_streams_is_called_unary_at_once() -> None:
    step = await start_fake_step(FakeStep("s", _add_one), call_streams=False)
    # a retry after the usual backoff would outlast the request's deadline: the answer must come at once
    balancer = Balancer("s", StaticEndpoints([step.address]), retry_backoff_s=60)
    await balancer.start()
    try:
        assert await balancer.wait_ready(10)
        assert _value(await balancer.infer(_request(1.0), time.monotonic() + 10)) == 2.0
        assert _value(await balancer.infer(_request(2.0), time.monotonic() + 10)) == 3.0
        (replica,) = balancer.replicas.values()
        assert replica.stream is not None and replica.stream.unsupported
        assert step.servicer.calls == 2
    finally:
        await balancer.aclose()
        await step.stop()


@pytest.mark.parametrize("call_streams", [True, False])
async def test_large_requests_take_a_unary_call_and_small_ones_the_stream(call_streams: bool) -> None:
    step = await start_fake_step(FakeStep("s", _add_one))
    balancer = Balancer("s", StaticEndpoints([step.address]), call_streams=call_streams)
    await balancer.start()
    try:
        assert await balancer.wait_ready(10)
        large = MAX_STREAMED_REQUEST_BYTES // 4 + 1  # float32 values
        assert _value(await balancer.infer(_request(1.0, size=large), time.monotonic() + 10)) == 2.0
        assert step.call_streams is not None and step.call_streams.taken == 0
        assert _value(await balancer.infer(_request(1.0, size=16), time.monotonic() + 10)) == 2.0
        assert step.call_streams.taken == (1 if call_streams else 0)
        assert step.servicer.calls == 2
    finally:
        await balancer.aclose()
        await step.stop()


async def test_a_step_server_serves_call_streams_and_counts_them_against_its_limit() -> None:
    """The real step server: streamed calls run its op loop, and `CallStreams` is bounded like its unary calls."""
    from conveyor_runtime.spec import StepSpec
    from conveyor_runtime.step import create_step_server

    server = create_step_server(StepSpec.model_validate({"name": "s", "op": "identity"}))
    await server.start()
    balancer = Balancer("s", StaticEndpoints([f"127.0.0.1:{server.port}"]))
    await balancer.start()
    try:
        assert await balancer.wait_ready(10)
        answer = await balancer.infer(_request(7.0), time.monotonic() + 10)
        assert decode_tensors(answer)["x"].tolist() == [7.0]
        streams = server._call_streams
        assert isinstance(streams, CallStreams) and streams.taken == 1
        assert streams.max_calls >= StepSpec.model_validate({"name": "s", "op": "identity"}).batching.maxQueueSize
    finally:
        await balancer.aclose()
        await server.stop(5)
