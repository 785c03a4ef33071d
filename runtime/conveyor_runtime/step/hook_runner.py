"""Where a plain (non-async) pre/postprocess hook runs: on the event loop when it is trivially short, else on a thread.

A hop to a worker thread and back costs tens of microseconds of CPU and two wake-ups, more than a hook such as
top-k or a reshape takes, and such hooks hold the GIL anyway, so a thread buys them nothing. The runner times
each call where it runs: a hook whose recent calls averaged under `inline_below_s` runs inline, on the loop; an
inline call that takes longer than `slow_s` sends the hook back to the threads until it has proven short again.
So the loop is blocked at most about `slow_s` once, and a hook that decodes images never leaves its thread.
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
        inline_below_s: float = 100e-6,
        slow_s: float = 1e-3,
        samples: int = 16,
        smoothing: float = 0.2,
    ) -> None:
        self._pool = pool
        self._inline_below_s = inline_below_s
        self._slow_s = slow_s
        self._samples = samples
        self._smoothing = smoothing
        self._average_s = 0.0
        self._seen = 0
        self.inline = False

    def _timed(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
        started = time.perf_counter()
        result = fn(*args)
        return result, time.perf_counter() - started

    def _learn(self, took_s: float) -> None:
        self._seen += 1
        self._average_s = took_s if self._seen == 1 else self._average_s + self._smoothing * (took_s - self._average_s)
        if self.inline and took_s > self._slow_s:
            self.inline = False
            self._seen = 0
        elif not self.inline and self._seen >= self._samples and self._average_s < self._inline_below_s:
            self.inline = True

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)`, inline or on the pool; its exception propagates either way."""
        if self.inline:
            started = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self._learn(time.perf_counter() - started)
        loop = asyncio.get_running_loop()
        result, took_s = await loop.run_in_executor(self._pool, self._timed, fn, *args)
        self._learn(took_s)
        return result
