"""Where plain pre/postprocess hooks run: short ones move onto the event loop, slow ones stay on (or go back to) a thread."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conveyor_runtime.step.hook_runner import HookRunner


def _where() -> threading.Thread:
    return threading.current_thread()


async def test_hook_runner_moves_a_short_hook_onto_the_loop_after_enough_short_calls() -> None:
    with ThreadPoolExecutor(1) as pool:
        runner = HookRunner(pool, samples=4)
        threads = [await runner.run(_where) for _ in range(6)]
    loop_thread = threading.current_thread()
    assert all(t is not loop_thread for t in threads[:4]), "the first calls run on the pool while they are measured"
    assert threads[4] is loop_thread and threads[5] is loop_thread and runner.inline


async def test_hook_runner_keeps_a_slow_hook_on_the_pool() -> None:
    def slow() -> threading.Thread:
        time.sleep(0.002)
        return threading.current_thread()

    with ThreadPoolExecutor(1) as pool:
        runner = HookRunner(pool, samples=2)
        threads = [await runner.run(slow) for _ in range(5)]
    assert not runner.inline and threading.current_thread() not in threads


async def test_hook_runner_sends_a_hook_back_to_the_pool_after_one_slow_inline_call() -> None:
    delay = {"s": 0.0}

    def hook() -> threading.Thread:
        time.sleep(delay["s"])
        return threading.current_thread()

    with ThreadPoolExecutor(1) as pool:
        # wide margins: a no-op call measured on a loaded 2-core machine once took over 1 ms
        runner = HookRunner(pool, samples=2, inline_below_s=0.05, slow_s=0.2)
        for _ in range(3):
            await runner.run(hook)
        assert runner.inline
        delay["s"] = 0.3  # the hook got slow: this inline call blocks the loop once ...
        assert await runner.run(hook) is threading.current_thread()
        assert not runner.inline
        assert await runner.run(hook) is not threading.current_thread()  # ... and the next runs on the pool


async def test_hook_runner_raises_the_hooks_error_inline_and_on_the_pool() -> None:
    def fail() -> None:
        raise ValueError("bad input")

    with ThreadPoolExecutor(1) as pool:
        runner = HookRunner(pool, samples=1, inline_below_s=1.0)
        with pytest.raises(ValueError, match="bad input"):
            await runner.run(fail)  # on the pool
        await runner.run(_where)
        assert runner.inline
        with pytest.raises(ValueError, match="bad input"):
            await runner.run(fail)  # inline


def test_hook_runner_judges_a_hook_by_its_cpu_time_not_by_its_wait_for_the_gil_on_a_thread() -> None:
    with ThreadPoolExecutor(1) as pool:
        waited = HookRunner(pool, samples=4)
        for _ in range(4):  # 20 us of work, 300 us on the clock: the thread waited for the GIL or a core
            waited._learn(300e-6, 20e-6)
        assert waited.inline
        busy = HookRunner(pool, samples=4)
        for _ in range(8):  # 300 us of work: a thread hop is worth it
            busy._learn(300e-6, 300e-6)
        assert not busy.inline
        sleeper = HookRunner(pool, samples=4)
        for _ in range(8):  # no work but 2 ms of waiting (I/O, a lock): kept off the loop
            sleeper._learn(2e-3, 10e-6)
        assert not sleeper.inline
