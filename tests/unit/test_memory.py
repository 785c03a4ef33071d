"""Giving large requests' memory back: when the trimmer trims, how often, and the glibc calls themselves."""

from __future__ import annotations

import asyncio
import gc
import os
import sys

import pytest

from conveyor_runtime.serving import LargeRequestTrimmer, freeze_startup_objects, malloc_trim, tune_malloc_for_large_requests


class CountingTrim:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return True


async def _settle(trimmer: LargeRequestTrimmer, trims: int) -> None:
    for _ in range(300):
        if trimmer.trims >= trims:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{trimmer.trims} trims, expected {trims}")


async def test_small_requests_never_trim() -> None:
    trim = CountingTrim()
    trimmer = LargeRequestTrimmer(1000, delay_s=0.0, trim=trim)
    for _ in range(50):
        trimmer.note(999)
    await asyncio.sleep(0.1)
    assert trim.calls == 0 and trimmer.trims == 0


async def test_a_burst_of_large_requests_costs_one_trim_after_the_delay() -> None:
    trim = CountingTrim()
    trimmer = LargeRequestTrimmer(1000, delay_s=0.05, min_interval_s=10.0, trim=trim)
    for _ in range(20):
        trimmer.note(5000)
    assert trim.calls == 0  # not while the requests may still be alive
    await _settle(trimmer, 1)
    await asyncio.sleep(0.1)
    assert trim.calls == 1


async def test_a_large_request_after_a_trim_gets_another_spaced_by_the_interval() -> None:
    trim = CountingTrim()
    trimmer = LargeRequestTrimmer(1000, delay_s=0.0, min_interval_s=0.3, trim=trim)
    trimmer.note(5000)
    await _settle(trimmer, 1)
    loop = asyncio.get_running_loop()
    noted = loop.time()
    trimmer.note(5000)
    await _settle(trimmer, 2)
    assert loop.time() - noted >= 0.2, "the second trim came before the interval"
    assert trim.calls == 2


async def test_a_request_noted_while_a_trim_runs_is_trimmed_after_it() -> None:
    started, finish = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    calls = 0

    def slow_trim() -> bool:
        nonlocal calls
        calls += 1
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(finish.wait(), loop).result(5)
        return True

    trimmer = LargeRequestTrimmer(1000, delay_s=0.0, min_interval_s=0.0, trim=slow_trim)
    trimmer.note(5000)
    await asyncio.wait_for(started.wait(), 5)
    trimmer.note(5000)  # freed only after the running trim looked
    finish.set()
    await _settle(trimmer, 2)
    assert calls == 2


async def test_cancel_drops_a_trim_not_started() -> None:
    trim = CountingTrim()
    trimmer = LargeRequestTrimmer(1000, delay_s=0.05, trim=trim)
    trimmer.note(5000)
    trimmer.cancel()
    await asyncio.sleep(0.15)
    assert trim.calls == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_glibc_calls_are_made_here() -> None:
    """On this glibc machine the calls reach the allocator (elsewhere they return False and do nothing)."""
    # glibc's own starting values (8 arenas a core, a 128 KiB threshold), so the test process is left much as it was
    assert tune_malloc_for_large_requests(arenas=8 * (os.cpu_count() or 1), mmap_threshold=128 * 1024) is True
    assert tune_malloc_for_large_requests(arenas=None, mmap_threshold=128 * 1024, trim_threshold=128 * 1024) is True
    assert isinstance(malloc_trim(), bool)


def test_freeze_startup_objects_takes_live_objects_out_of_the_collectors_scans() -> None:
    started: list[list[int]] = [[]]  # an object alive at start-up, tracked by the collector
    assert any(o is started for o in gc.get_objects())
    try:
        assert freeze_startup_objects() > 0
        assert not any(o is started for o in gc.get_objects())
    finally:
        gc.unfreeze()
