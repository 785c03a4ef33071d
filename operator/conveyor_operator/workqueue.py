"""One reconcile at a time per pipeline: triggers that arrive while one runs fold into a single run after it.

Every trigger (the pipeline's own events, its children's, the periodic resync, a retry) goes through here, so
a pipeline's reconciles never overlap and each starts from a fresh read. Different pipelines run side by side.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

__all__ = ["Key", "ReconcileQueue", "Retry"]

logger = logging.getLogger(__name__)

#: (namespace, name) of a pipeline.
Key = tuple[str, str]


class Retry(Exception):
    """Raised by the work: run this key again after `delay` seconds (0: at once; None: back off exponentially)."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


def _label(key: Key) -> str:
    return "/".join(key)


class ReconcileQueue:
    """Runs `work(key)` for each queued key, never twice at once for one key.

    A key queued while its work runs is marked, and the work runs once more when the current run ends, however
    many triggers arrived meanwhile. Failures come back after an exponential backoff (`backoff_s` doubling up to
    `max_backoff_s`), reset by a success. Call it from the event loop only.
    """

    def __init__(
        self, work: Callable[[Key], Awaitable[None]], *, backoff_s: float = 1.0, max_backoff_s: float = 60.0
    ) -> None:
        if not 0 < backoff_s <= max_backoff_s:
            raise ValueError(f"backoff must be within 0 < backoff_s <= max_backoff_s, got {backoff_s} and {max_backoff_s}")
        self._work = work
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._known: set[Key] = set()
        self._running: dict[Key, asyncio.Task[None]] = {}
        self._again: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._failures: dict[Key, int] = {}
        self._resync: asyncio.Task[None] | None = None

    @property
    def known(self) -> frozenset[Key]:
        """Keys the periodic resync visits: every key queued or tracked, and not forgotten since."""
        return frozenset(self._known)

    @property
    def running(self) -> frozenset[Key]:
        """Keys whose work is in progress."""
        return frozenset(self._running)

    @property
    def retrying(self) -> frozenset[Key]:
        """Keys with a retry scheduled."""
        return frozenset(self._timers)

    def track(self, key: Key) -> None:
        """Visit `key` at each resync, without running its work now."""
        self._known.add(key)

    def enqueue(self, key: Key, reason: str) -> None:
        """Run the work for `key` now, or once more right after the run in progress; `reason` is for the log."""
        self._known.add(key)
        if key in self._running:
            logger.debug("%s: %s while a reconcile runs; it runs again after", _label(key), reason)
            self._again.add(key)
            return
        self._cancel_timer(key)
        logger.debug("%s: reconcile (%s)", _label(key), reason)
        task = asyncio.create_task(self._run(key), name=f"reconcile {_label(key)}")
        self._running[key] = task
        task.add_done_callback(self._finished)

    def forget(self, key: Key) -> None:
        """The pipeline is gone: no more resyncs or retries (a run in progress finishes and finds it gone)."""
        self._known.discard(key)
        self._again.discard(key)
        self._failures.pop(key, None)
        self._cancel_timer(key)

    def start_resync(self, interval_s: float) -> None:
        """Queue every known key each `interval_s` seconds: the backstop for anything the watches missed."""
        if self._resync is None:
            self._resync = asyncio.create_task(self._resync_every(interval_s), name="resync")
            self._resync.add_done_callback(self._finished)

    async def aclose(self) -> None:
        """Stop the resync, pending retries and runs in progress."""
        for key in list(self._timers):
            self._cancel_timer(key)
        tasks = [*self._running.values(), *([self._resync] if self._resync else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, key: Key) -> None:
        try:
            while True:
                self._again.discard(key)
                self._cancel_timer(key)
                delay = await self._attempt(key)
                if delay is not None and delay <= 0:
                    self._again.add(key)
                elif delay is not None and key not in self._again:
                    self._timers[key] = asyncio.get_running_loop().call_later(delay, self._retry, key)
                if key not in self._again:
                    return
        finally:
            self._running.pop(key, None)

    async def _attempt(self, key: Key) -> float | None:
        """Run the work once; None when done, else the seconds until it should run again."""
        try:
            await self._work(key)
        except Retry as exc:
            delay = exc.delay if exc.delay is not None else self._next_backoff(key)
            # A conflict is routine; a failure that comes back is worth a warning.
            level = logging.DEBUG if delay <= 0 else logging.INFO if self._failures.get(key, 0) <= 1 else logging.WARNING
            logger.log(level, "%s: %s; again in %.3gs", _label(key), exc, delay)
            return delay
        except Exception:
            delay = self._next_backoff(key)
            logger.exception("%s: reconcile failed; again in %.3gs", _label(key), delay)
            return delay
        self._failures.pop(key, None)
        return None

    def _next_backoff(self, key: Key) -> float:
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        return float(min(self._backoff_s * 2 ** min(failures - 1, 32), self._max_backoff_s))

    def _retry(self, key: Key) -> None:
        self._timers.pop(key, None)
        if key in self._known:
            self.enqueue(key, "retry")

    def _cancel_timer(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    async def _resync_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            for key in sorted(self._known):
                self.enqueue(key, "resync")

    @staticmethod
    def _finished(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s stopped", task.get_name(), exc_info=task.exception())
