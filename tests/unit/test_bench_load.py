"""The bench's closed and open loops over any call: which requests count, latency, failures by name."""

from __future__ import annotations

import asyncio

import pytest

from conveyor_benchmarks.load import closed_loop_calls, open_loop_calls


def test_bench_closed_loop_counts_only_the_window_and_failures_by_name() -> None:
    sent: list[int] = []

    async def call(n: int) -> str | None:
        sent.append(n)
        await asyncio.sleep(0.01)
        return "UNAVAILABLE" if n % 3 == 0 else None

    result = asyncio.run(closed_loop_calls(call, concurrency=2, duration_s=0.3, warmup_s=0.1, rows_per_request=4))
    assert result.level == "C=2" and result.rows_per_request == 4
    assert sorted(sent) == list(range(len(sent)))  # client i sends i, i+2, i+4, ...: every number once
    counted = len(result.latencies) + result.error_count
    assert 0 < counted < len(sent)  # warm-up requests and those answered after the window are left out
    assert set(result.errors) <= {"UNAVAILABLE"} and result.error_count > 0
    assert min(result.latencies) >= 0.01
    assert result.rows_per_s == pytest.approx(4 * len(result.latencies) / 0.3)


def test_bench_open_loop_sends_on_schedule_whatever_the_answers_and_measures_from_the_schedule() -> None:
    started: list[int] = []

    async def call(n: int) -> str | None:
        started.append(n)
        await asyncio.sleep(0.05)  # slower than the 20 ms between sends: requests overlap, the schedule holds
        return "ValueError" if n == 7 else None

    result = asyncio.run(open_loop_calls(call, rate=50, duration_s=0.2, warmup_s=0.1))
    assert started == list(range(15))  # (0.1 + 0.2) s at 50/s, whatever the float error of 0.1 + 0.2
    assert len(result.latencies) + result.error_count == 10  # those scheduled inside the window
    assert result.errors == {"ValueError": 1}
    assert min(result.latencies) >= 0.05
    with pytest.raises(ValueError, match="rate must be > 0"):
        asyncio.run(open_loop_calls(call, rate=0, duration_s=1))
