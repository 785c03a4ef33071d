"""Load generation against an Open Inference Protocol gRPC endpoint: closed loop (C clients) and open loop (fixed rate).

Open-loop latency is measured from each request's scheduled send time, so a slow server cannot hide its queueing
(no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio

from conveyor_runtime.gateway import CHANNEL_OPTIONS
from conveyor_runtime.protocol import InferenceStub, pb

__all__ = [
    "Call",
    "LoadResult",
    "closed_loop",
    "closed_loop_calls",
    "grpc_call",
    "open_loop",
    "open_loop_calls",
    "open_stubs",
    "percentile",
]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[rank]


@dataclass
class LoadResult:
    """What one load level produced: completed requests, rows, errors and latencies (seconds)."""

    mode: str
    level: str
    seconds: float
    rows_per_request: int
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds > 0 else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.requests_per_s * self.rows_per_request

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000.0



@contextlib.asynccontextmanager
async def open_stubs(address: str, channels: int) -> AsyncIterator[list[InferenceStub]]:
    """Stubs over `channels` separate connections (one HTTP/2 connection caps a client), closed afterwards."""
    pool = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(max(1, channels))]
    try:
        yield [InferenceStub(channel) for channel in pool]
    finally:
        for channel in pool:
            await channel.close()


#: One request of a load level: ``call(n)`` sends request number `n` and returns None when it succeeded, else the
#: failure's name (a gRPC status code's name, an exception's type) under which the level counts it.
Call = Callable[[int], Awaitable[str | None]]


async def closed_loop_calls(
    call: Call, *, concurrency: int, duration_s: float, warmup_s: float = 0.0, rows_per_request: int = 1
) -> LoadResult:
    """`concurrency` clients each send a request, wait for its answer and send the next; only requests sent and
    answered inside the window (after `warmup_s`) count."""
    result = LoadResult("closed", f"C={concurrency}", duration_s, rows_per_request)
    start = time.monotonic() + warmup_s
    end = start + duration_s

    async def client(index: int) -> None:
        n = index
        while True:
            sent = time.monotonic()
            if sent >= end:
                return
            failure = await call(n)
            n += concurrency
            done = time.monotonic()
            if sent < start or done > end:
                continue
            if failure is None:
                result.latencies.append(done - sent)
            else:
                result.errors[failure] = result.errors.get(failure, 0) + 1

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return result


async def open_loop_calls(
    call: Call, *, rate: float, duration_s: float, warmup_s: float = 0.0, rows_per_request: int = 1
) -> LoadResult:
    """Requests sent at a fixed `rate` per second whatever the answers; latency from each scheduled send time. Every
    call must end by itself (a timeout of its own): the level waits for the last one."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    result = LoadResult("open", f"{rate:g}/s", duration_s, rows_per_request)
    # Send counts from whole numbers, not from comparing float times: begin + 15 * 0.02 < begin + (0.1 + 0.2) held or
    # not with the clock's value, sending a 16th request now and then.
    first_counted, total = _sends_before(warmup_s, rate), _sends_before(warmup_s + duration_s, rate)
    begin, interval = time.monotonic(), 1.0 / rate

    async def one(n: int, scheduled: float) -> None:
        failure = await call(n)
        if n < first_counted:
            return
        if failure is None:
            result.latencies.append(time.monotonic() - scheduled)
        else:
            result.errors[failure] = result.errors.get(failure, 0) + 1

    tasks = []
    for n in range(total):
        scheduled = begin + n * interval
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n, scheduled)))
    await asyncio.gather(*tasks)
    return result


def _sends_before(seconds: float, rate: float) -> int:
    """How many sends at `rate` per second are scheduled before `seconds` (at 0, 1/rate, ...), rounding off the float
    error of the product so that 0.3 s at 50/s is 15 sends, every time."""
    return math.ceil(round(seconds * rate, 6))


def grpc_call(stubs: list[InferenceStub], make_request: Callable[[int], pb.ModelInferRequest], timeout: float) -> Call:
    """Request `n` on stub ``n % len(stubs)``, failing by its status code's name."""

    async def call(n: int) -> str | None:
        try:
            await stubs[n % len(stubs)].ModelInfer(make_request(n), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
        return None

    return call


async def closed_loop(
    address: str,
    make_request: Callable[[int], pb.ModelInferRequest],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 0.0,
    rows_per_request: int = 1,
    timeout_s: float = 60.0,
    channels: int = 2,
) -> LoadResult:
    """`closed_loop_calls` of Open Inference Protocol requests to `address`, over `channels` connections."""
    async with open_stubs(address, channels) as stubs:
        return await closed_loop_calls(
            grpc_call(stubs, make_request, timeout_s),
            concurrency=concurrency,
            duration_s=duration_s,
            warmup_s=warmup_s,
            rows_per_request=rows_per_request,
        )


async def open_loop(
    address: str,
    make_request: Callable[[int], pb.ModelInferRequest],
    *,
    rate: float,
    duration_s: float,
    warmup_s: float = 0.0,
    rows_per_request: int = 1,
    timeout_s: float = 60.0,
    channels: int = 2,
) -> LoadResult:
    """`open_loop_calls` of Open Inference Protocol requests to `address` (each bounded by `timeout_s`)."""
    async with open_stubs(address, channels) as stubs:
        return await open_loop_calls(
            grpc_call(stubs, make_request, timeout_s),
            rate=rate,
            duration_s=duration_s,
            warmup_s=warmup_s,
            rows_per_request=rows_per_request,
        )
