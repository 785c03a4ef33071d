"""Whether a batch that could run alone (nothing computing, nothing queued) should, from measured compute times.

Running alone holds every model instance for one batch on a session with all the step's threads. That pays only
while the wide session is clearly faster than one instance at the same batch size; on a node whose cores are
contended (by other pods, or by the pipeline's own other steps at moderate load) it is not, and the batch then keeps
requests that arrive meanwhile waiting for nothing. So the batcher keeps both times per batch size and runs alone
only where that was faster by `gain`. While running alone, batches never run beside others, so now and then one
runs on an instance to measure that (`explore_every`); while not, now and then one runs alone (`recheck_every`).

Each time compared is the median of the last `window` batches of that size and kind, not a moving average: on a
2-core VM a single lone batch now and then took 2-3x its usual time (27 ms against 9-10 for ResNet-18), and one such
outlier raised the moving average from 9.8 to 13.2 ms, next to the 13.4 ms at which lone batches stopped running
alone; a median ignores it, yet follows a change that lasts within a few batches.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

__all__ = ["AlonePolicy"]


@dataclass
class AlonePolicy:
    """`gain`: how much faster (seconds, as a share) running alone must be than an instance; `explore_every`: while
    running alone at a size, every n-th such batch runs on an instance (rare: it is a slower answer); `recheck_every`:
    while not, every n-th runs alone; `window`: how many recent times of each size and kind the median is taken of."""

    gain: float = 0.8
    explore_every: int = 128
    recheck_every: int = 16
    window: int = 5
    _alone: dict[int, deque[float]] = field(default_factory=dict)
    _beside: dict[int, deque[float]] = field(default_factory=dict)
    _asked: dict[int, int] = field(default_factory=dict)

    def run_alone(self, rows: int) -> bool:
        """Whether a batch of `rows` that could run alone should."""
        asked = self._asked[rows] = self._asked.get(rows, 0) + 1
        alone, beside = self._median(self._alone, rows), self._median(self._beside, rows)
        if alone is None:
            return True
        if beside is None or alone <= beside * self.gain:
            return asked % self.explore_every != 0
        return asked % self.recheck_every == 0

    def observe(self, rows: int, seconds: float, *, alone: bool) -> None:
        """A batch of `rows` computed in `seconds`, alone or on one instance."""
        (self._alone if alone else self._beside).setdefault(rows, deque(maxlen=self.window)).append(seconds)

    def speedup(self, rows: int) -> float | None:
        """An instance's time over the alone time at `rows` (None until both were measured)."""
        alone, beside = self._median(self._alone, rows), self._median(self._beside, rows)
        return None if alone is None or beside is None or alone <= 0 else beside / alone

    @staticmethod
    def _median(times: dict[int, deque[float]], rows: int) -> float | None:
        """The median of the recent times at `rows` (None before the first)."""
        recent = times.get(rows)
        return statistics.median(recent) if recent else None
