"""Where a plain (non-async) op hook runs (pre/postprocess, and an op's `process`): on the event loop when it is
trivially short, else on a thread.

A hop to a worker thread and back costs tens of microseconds of CPU and two wake-ups, more than a hook such as
top-k or a reshape takes, and such hooks hold the GIL anyway, so a thread buys them nothing. The runner times each
call where it runs: a hook whose recent calls averaged under `inline_below_s` of CPU time and under
`inline_wall_below_s` of wall time runs inline, on the loop; an inline call that takes longer than `slow_s` sends the
hook back to the threads until it has proven short again. So the loop is blocked at most about `slow_s` once, and a
hook that decodes images never leaves its thread.

CPU time proves a hook short because on a worker thread the wall time also counts waits that are not the hook's (for
the GIL, for a core); the wall bound keeps a hook that sleeps or blocks on I/O off the loop. The CPU bound is 250 us,
not less, because a served hook runs cold: between two requests the model evicts its code and data from the caches,
and ResNet-18's top-k took 80-150 us of CPU per call in a served step against 18 us in a tight loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

__all__ = ["HookRunner"]


class HookRunner:
    """Runs one hook inline or on `pool`, whichever its measured duration says (see the module docstring)."""

    def __init__(
        self,
        pool: Executor,
        *,
        inline_below_s: float = 250e-6,
        inline_wall_below_s: float = 500e-6,
        slow_s: float = 1e-3,
        samples: int = 16,
        smoothing: float = 0.2,
    ) -> None:
        self._pool = pool
        self._inline_below_s = inline_below_s
        self._inline_wall_below_s = max(inline_below_s, inline_wall_below_s)
        self._slow_s = slow_s
        self._samples = samples
        self._smoothing = smoothing
        self._average_cpu_s = 0.0
        self._average_wall_s = 0.0
        self._seen = 0
        self.inline = False

    def _timed(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
        wall, cpu = time.perf_counter(), time.thread_time()
        result = fn(*args)
        return result, time.perf_counter() - wall, time.thread_time() - cpu

    def _average(self, before: float, took_s: float) -> float:
        return took_s if self._seen == 1 else before + self._smoothing * (took_s - before)

    def _learn(self, wall_s: float, cpu_s: float) -> None:
        self._seen += 1
        self._average_wall_s = self._average(self._average_wall_s, wall_s)
        self._average_cpu_s = self._average(self._average_cpu_s, cpu_s)
        if self.inline and wall_s > self._slow_s:
            self.inline = False
            self._seen = 0
        elif (
            not self.inline
            and self._seen >= self._samples
            and self._average_cpu_s < self._inline_below_s
            and self._average_wall_s < self._inline_wall_below_s
        ):
            self.inline = True

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)`, inline or on the pool; its exception propagates either way."""
        if self.inline:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args)
            finally:
                self._learn(time.perf_counter() - wall, time.thread_time() - cpu)
        loop = asyncio.get_running_loop()
        result, wall_s, cpu_s = await loop.run_in_executor(self._pool, self._timed, fn, *args)
        self._learn(wall_s, cpu_s)
        return result
