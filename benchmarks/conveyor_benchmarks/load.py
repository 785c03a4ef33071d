"""Load generation against an Open Inference Protocol gRPC endpoint: closed loop (C clients) and open loop (fixed rate).

Open-loop latency is measured from each request's scheduled send time, so a slow server cannot hide its queueing
(no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio

from conveyor_runtime.gateway import CHANNEL_OPTIONS
from conveyor_runtime.protocol import InferenceStub, pb

__all__ = ["LoadResult", "closed_loop", "open_loop", "percentile"]


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

    def add_error(self, code: grpc.StatusCode) -> None:
        self.errors[code.name] = self.errors.get(code.name, 0) + 1


@contextlib.asynccontextmanager
async def _stubs(address: str, channels: int) -> AsyncIterator[list[InferenceStub]]:
    """Stubs over `channels` separate connections (one HTTP/2 connection caps a client), closed afterwards."""
    pool = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(max(1, channels))]
    try:
        yield [InferenceStub(channel) for channel in pool]
    finally:
        for channel in pool:
            await channel.close()


async def _call(stub: InferenceStub, request: pb.ModelInferRequest, timeout: float) -> grpc.StatusCode:
    try:
        await stub.ModelInfer(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


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
    """`concurrency` clients each send a request, wait for its answer and send the next; only the window counts."""
    result = LoadResult("closed", f"C={concurrency}", duration_s, rows_per_request)
    start = time.monotonic() + warmup_s
    end = start + duration_s

    async def client(index: int, stub: InferenceStub) -> None:
        n = index
        while True:
            sent = time.monotonic()
            if sent >= end:
                return
            code = await _call(stub, make_request(n), timeout_s)
            n += concurrency
            done = time.monotonic()
            if sent < start or done > end:
                continue
            if code == grpc.StatusCode.OK:
                result.latencies.append(done - sent)
            else:
                result.add_error(code)

    async with _stubs(address, channels) as stubs:
        await asyncio.gather(*(client(i, stubs[i % len(stubs)]) for i in range(concurrency)))
    return result


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
    """Requests sent at a fixed `rate` per second whatever the answers; latency from each scheduled send time."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    result = LoadResult("open", f"{rate:g}/s", duration_s, rows_per_request)
    begin = time.monotonic()
    start = begin + warmup_s
    end = start + duration_s
    interval = 1.0 / rate
    tasks: set[asyncio.Task[None]] = set()

    async def one(stub: InferenceStub, n: int, scheduled: float) -> None:
        code = await _call(stub, make_request(n), timeout_s)
        if scheduled < start:
            return
        if code == grpc.StatusCode.OK:
            result.latencies.append(time.monotonic() - scheduled)
        else:
            result.add_error(code)

    async with _stubs(address, channels) as stubs:
        try:
            n = 0
            while True:
                scheduled = begin + n * interval
                if scheduled >= end:
                    break
                delay = scheduled - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(one(stubs[n % len(stubs)], n, scheduled))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
            if tasks:
                await asyncio.wait(tasks, timeout=timeout_s)
        finally:
            for task in tasks:
                task.cancel()
    return result
