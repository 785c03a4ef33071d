"""The reconcile queue: one run at a time per pipeline, triggers folded into one more run, retries, shutdown."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from conveyor_operator.workqueue import Key, ReconcileQueue, Retry

A: Key = ("ns", "a")
B: Key = ("ns", "b")


class Work:
    """Work that records each run and, for the keys in `hold`, waits until the test lets it finish."""

    def __init__(self, *hold: Key) -> None:
        self.runs: Counter[Key] = Counter()
        self.active: Counter[Key] = Counter()
        self.most_active: Counter[Key] = Counter()
        self.started = {key: asyncio.Event() for key in (A, B)}
        self.finish = {key: asyncio.Event() for key in hold}
        self.done = {key: asyncio.Event() for key in (A, B)}
        self.failures: dict[Key, list[BaseException]] = {}

    async def __call__(self, key: Key) -> None:
        self.runs[key] += 1
        self.active[key] += 1
        self.most_active[key] = max(self.most_active[key], self.active[key])
        self.started[key].set()
        try:
            if key in self.finish:
                await self.finish[key].wait()
            failures = self.failures.get(key)
            if failures:
                raise failures.pop(0)
        finally:
            self.active[key] -= 1
            self.done[key].set()


async def _idle(queue: ReconcileQueue) -> None:
    """Until no run is in progress."""
    while queue.running:
        await asyncio.sleep(0)


async def test_queue_runs_one_reconcile_at_a_time_per_key_and_folds_triggers_into_one_more_run() -> None:
    work = Work(A)
    queue = ReconcileQueue(work)
    queue.enqueue(A, "created")
    await work.started[A].wait()
    for reason in ("child changed", "spec changed", "resync"):
        queue.enqueue(A, reason)
    queue.enqueue(B, "created")
    await work.done[B].wait()  # another key is not held up by A
    assert work.runs[A] == 1

    work.finish[A].set()
    await _idle(queue)
    assert work.runs == Counter({A: 2, B: 1})
    assert work.most_active[A] == 1
    await queue.aclose()


def _started_failing(*failures: BaseException, backoff_s: float = 1.0) -> tuple[Work, ReconcileQueue]:
    """A queue whose work for A fails with `failures` in turn, then succeeds; A is queued."""
    work = Work()
    work.failures[A] = list(failures)
    queue = ReconcileQueue(work, backoff_s=backoff_s, max_backoff_s=2 * backoff_s)
    queue.enqueue(A, "created")
    return work, queue


async def test_queue_runs_again_at_once_on_retry_without_delay() -> None:
    work, queue = _started_failing(Retry("the pipeline changed while it was reconciled", delay=0))
    await _idle(queue)
    assert work.runs[A] == 2
    await queue.aclose()


async def test_queue_backs_off_after_failures_and_succeeds_later() -> None:
    work, queue = _started_failing(Retry("API server unavailable"), RuntimeError("bug"), backoff_s=0.001)
    while work.runs[A] < 3:
        work.done[A].clear()
        await work.done[A].wait()
    await _idle(queue)
    assert work.runs[A] == 3 and not work.failures[A]
    assert queue._failures == {}
    await queue.aclose()


def test_queue_backoff_doubles_up_to_its_limit() -> None:
    queue = ReconcileQueue(Work(), backoff_s=1.0, max_backoff_s=60.0)
    assert [queue._next_backoff(A) for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


async def test_queue_forget_drops_a_pending_retry_and_the_resync() -> None:
    _, queue = _started_failing(Retry("API server unavailable", delay=3600))
    await _idle(queue)
    assert A in queue.retrying and A in queue.known
    queue.forget(A)
    assert A not in queue.retrying and A not in queue.known
    await queue.aclose()


async def test_queue_close_cancels_runs_in_progress() -> None:
    work = Work(A)
    queue = ReconcileQueue(work)
    queue.enqueue(A, "created")
    await work.started[A].wait()
    await queue.aclose()
    assert work.active[A] == 0 and not queue.running


def test_queue_rejects_a_backoff_out_of_order() -> None:
    with pytest.raises(ValueError, match="backoff"):
        ReconcileQueue(Work(), backoff_s=10, max_backoff_s=1)
