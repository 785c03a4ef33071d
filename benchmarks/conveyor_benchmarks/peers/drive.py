"""Closed and open loops over any async call (the Ray and Triton clients), with `load`'s timing rules. Closed: C
clients, each sends, waits for its answer and sends again; only answers sent and received inside the window count.
Open: requests sent at a fixed rate whatever the answers; latency from each scheduled send time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from ..load import LoadResult

__all__ = ["closed_loop_calls", "open_loop_calls"]


async def closed_loop_calls(
    call: Callable[[int], Awaitable[None]],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 0.0,
    rows_per_request: int = 1,
) -> LoadResult:
    """`call(n)` raises on a failed request (counted by its exception type); see `load.closed_loop`."""
    result = LoadResult("closed", f"C={concurrency}", duration_s, rows_per_request)
    start = time.monotonic() + warmup_s
    end = start + duration_s

    async def client(index: int) -> None:
        n = index
        while True:
            sent = time.monotonic()
            if sent >= end:
                return
            error = ""
            try:
                await call(n)
            except Exception as exc:  # any client or server failure is an error of this level, not of the bench
                error = type(exc).__name__
            n += concurrency
            done = time.monotonic()
            if sent < start or done > end:
                continue
            if error:
                result.errors[error] = result.errors.get(error, 0) + 1
            else:
                result.latencies.append(done - sent)

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return result


async def open_loop_calls(
    call: Callable[[int], Awaitable[None]],
    *,
    rate: float,
    duration_s: float,
    warmup_s: float = 0.0,
    rows_per_request: int = 1,
) -> LoadResult:
    """`call(n)` raises on a failed request (counted by its exception type); see `load.open_loop`."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    result = LoadResult("open", f"{rate:g}/s", duration_s, rows_per_request)
    begin = time.monotonic()
    start, interval = begin + warmup_s, 1.0 / rate
    end = start + duration_s

    async def one(n: int, scheduled: float) -> None:
        error = ""
        try:
            await call(n)
        except Exception as exc:  # any client or server failure is an error of this level, not of the bench
            error = type(exc).__name__
        if scheduled < start:
            return
        if error:
            result.errors[error] = result.errors.get(error, 0) + 1
        else:
            result.latencies.append(time.monotonic() - scheduled)

    tasks = []
    n = 0
    while (scheduled := begin + n * interval) < end:
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n, scheduled)))
        n += 1
    await asyncio.gather(*tasks)
    return result
