"""Dynamic batching for one step: requests queue up as rows and leave as batches (after Ray Serve's batch queue).

`form_batch` is the pure decision (which queued items leave now, and why); `Batcher` drives it with asyncio, asking
only while a model instance is free. Work-conserving (the default): a free instance takes what is queued at once, so
batches grow only while every instance is busy. Fill: a batch waits up to the queue delay for more, as Triton does.

Alone: with a `process_alone` (a model whose one extra session has all the step's CPU threads), a batch that leaves
while nothing computes and nothing else is queued takes every slot and runs there, so a lone request at low load gets
every core and no batch ever computes beside it on too few cores; under load batches still run side by side. It
does so only while that was measured to pay at the batch's size (`AlonePolicy`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..arrays import Arrays, rows_of
from ..errors import DeadlineExceeded, InvalidRequest, ModelNotReady, QueueFull, RequestError, StepFailed
from ..serving import TaskSet
from .alone_policy import AlonePolicy
from .metrics import StepMetrics

__all__ = ["POLICIES", "BatchPlan", "Batcher", "Queued", "batch_key", "form_batch", "split_rows"]

log = logging.getLogger(__name__)

Process = Callable[[Arrays], Awaitable[Arrays]]
#: Called once if the batcher's driver dies (the replica can no longer compute anything).
OnFailure = Callable[[BaseException], None]
#: `BatchingSpec.policy` values.
POLICIES = ("workConserving", "fill")


class Queued(Protocol):
    """What `form_batch` needs to know about a queued item."""

    @property
    def rows(self) -> int: ...
    @property
    def key(self) -> Hashable: ...
    @property
    def enqueued(self) -> float: ...
    @property
    def deadline(self) -> float | None: ...


@dataclass(frozen=True)
class BatchPlan:
    """The decision for the queue at one instant.

    ``take``: indices (ascending) of the items that form the batch now; empty means wait. ``expired``: indices
    whose deadline has passed (fail them). ``reason``: full | preferred | timeout | idle | single. ``wake_at``: when
    to decide again if nothing new arrives (None: wait for an item).
    """

    take: list[int]
    expired: list[int]
    reason: str | None
    wake_at: float | None


def form_batch(
    queue: Sequence[Queued],
    *,
    max_rows: int,
    max_delay: float,
    preferred: Sequence[int],
    now: float,
    work_conserving: bool = False,
) -> BatchPlan:
    """Pick the next batch from a FIFO queue for a free model instance.

    The oldest live item leads; only items with its key (same non-batch shape and dtype) join, in queue order,
    while the rows fit in `max_rows` (an item that does not fit stops the batch, so order is kept). The batch
    leaves when full, when its size is the largest preferred size reachable, or when `max_delay` has passed
    since the leader was queued; `work_conserving`: at once with what is queued (reason ``idle``).
    ``max_rows == 0`` means no batching: the leader leaves alone at once.
    """
    expired = [i for i, item in enumerate(queue) if item.deadline is not None and item.deadline <= now]
    dead = set(expired)
    live = [i for i in range(len(queue)) if i not in dead]
    if not live:
        return BatchPlan([], expired, None, None)
    head = queue[live[0]]
    if max_rows <= 0 or head.rows >= max_rows:
        return BatchPlan([live[0]], expired, "single" if max_rows <= 0 else "full", None)
    take: list[int] = []
    sizes: list[int] = []
    total = 0
    blocked = False
    for i in live:
        item = queue[i]
        if item.key != head.key:
            continue
        if total + item.rows > max_rows:
            blocked = True
            break
        total += item.rows
        take.append(i)
        sizes.append(total)
        if total == max_rows:
            break
    if total == max_rows or blocked:
        return BatchPlan(take, expired, "full", None)
    reachable = [n for n, size in enumerate(sizes) if size in preferred]
    if reachable:
        return BatchPlan(take[: reachable[-1] + 1], expired, "preferred", None)
    if work_conserving:
        return BatchPlan(take, expired, "idle", None)
    timeout_at = head.enqueued + max_delay
    if now >= timeout_at:
        return BatchPlan(take, expired, "timeout", None)
    return BatchPlan([], expired, None, timeout_at)


def batch_key(arrays: Arrays) -> Hashable:
    """Items merge only when every tensor has the same name, dtype and non-batch shape."""
    return tuple((name, array.dtype.str, array.shape[1:]) for name, array in sorted(arrays.items()))


def split_rows(arrays: Arrays, rows: int, chunk: int) -> list[Arrays]:
    """Row ranges of at most `chunk` rows (views, no copies)."""
    return [{name: a[start : start + chunk] for name, a in arrays.items()} for start in range(0, rows, chunk)]


@dataclass(eq=False)
class _Item:
    arrays: Arrays
    rows: int
    key: Hashable
    future: asyncio.Future[Arrays]
    enqueued: float
    deadline: float | None


@dataclass
class _Stats:
    batches: int = 0
    rows: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    alone: int = 0  # batches computed alone, holding every slot


class Batcher:
    """Queues requests' rows and runs `process` on batches, at most `concurrency` batches at once (one per instance).

    `submit` splits a request larger than ``max_batch_size`` into chunks and reassembles the answer in order.
    Every submitted request is answered exactly once: with its rows, or with one `RequestError`.
    """

    def __init__(
        self,
        process: Process,
        *,
        name: str = "step",
        max_batch_size: int = 8,
        max_queue_delay_s: float = 0.001,
        preferred_batch_sizes: Sequence[int] = (),
        max_queue_size: int = 1024,
        concurrency: int = 1,
        policy: str = "workConserving",
        metrics: StepMetrics | None = None,
        process_alone: Process | None = None,
    ) -> None:
        """`process_alone`: computes a batch that runs with nothing beside it (see the module's docstring)."""
        if max_batch_size < 0:
            raise ValueError(f"max_batch_size must be >= 0, got {max_batch_size}")
        if max_queue_delay_s < 0:
            raise ValueError(f"max_queue_delay_s must be >= 0, got {max_queue_delay_s}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {max_queue_size}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be {' or '.join(map(repr, POLICIES))}, got {policy!r}")
        for size in preferred_batch_sizes:
            if size < 1 or (max_batch_size and size > max_batch_size):
                raise ValueError(f"preferred batch sizes must be in 1..{max_batch_size}, got {size}")
        self._process = process
        self._process_alone = process_alone if concurrency > 1 else None
        self.alone_policy = AlonePolicy()
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.preferred = tuple(sorted(set(preferred_batch_sizes)))
        self.max_queue_size = max_queue_size
        self.concurrency = concurrency
        self.policy = policy
        self._metrics = metrics
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._loop_task: asyncio.Task[None] | None = None
        self._driver = TaskSet(f"step {name} batcher")
        self._running = TaskSet(f"step {name} batches")
        self._closed = False
        self._on_failure: OnFailure | None = None
        self.failure: BaseException | None = None
        self.stats = _Stats()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def busy(self) -> bool:
        """Items queued or batches computing."""
        return bool(self._queue) or len(self._running) > 0

    async def start(self, on_failure: OnFailure | None = None) -> None:
        """Start the driver; `on_failure` hears if it dies (every later request then gets UNAVAILABLE)."""
        self._on_failure = on_failure
        if self._loop_task is None:
            self._loop_task = self._driver.spawn(self._run(), name=f"batcher-{self.name}", on_done=self._loop_done)

    def refuse_if_full(self) -> None:
        """Raise QueueFull when not one more row fits: checked before a request is decoded or preprocessed, so a
        refusal under overload costs next to nothing (`submit` still checks the request's real row count)."""
        if self._queued_rows >= self.max_queue_size:
            raise QueueFull(
                f"step {self.name!r} queue is full ({self._queued_rows} of {self.max_queue_size} rows queued); "
                "retry later or add replicas"
            )

    async def submit(self, arrays: Arrays, *, deadline: float | None = None) -> Arrays:
        """Queue one request (rows along axis 0 of every tensor) and wait for its outputs."""
        if self.failure is not None:
            raise ModelNotReady(self._stopped_message())
        if self._closed or self._loop_task is None:
            raise ModelNotReady(f"step {self.name!r} is not accepting requests (starting or shutting down); retry")
        rows = rows_of(arrays)
        if rows > self.max_queue_size:
            raise InvalidRequest(
                f"step {self.name!r}: the request has {rows} rows but maxQueueSize is {self.max_queue_size}, "
                "so it can never be queued; send fewer rows per request"
            )
        if self._queued_rows + rows > self.max_queue_size:
            raise QueueFull(
                f"step {self.name!r} queue is full ({self._queued_rows} of {self.max_queue_size} rows queued, "
                f"request has {rows}); retry later, send smaller requests or add replicas"
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        if self.max_batch_size and rows > self.max_batch_size:
            chunks = split_rows(arrays, rows, self.max_batch_size)
        else:
            chunks = [arrays]
        key = batch_key(arrays)
        items = [
            _Item(chunk, rows_of(chunk), key, loop.create_future(), now, deadline) for chunk in chunks
        ]
        self._queue.extend(items)
        self._queued_rows += rows
        self._depth_changed()
        self._arrived.set()
        try:
            results = [await item.future for item in items]
        except BaseException:
            for item in items:
                item.future.cancel()
            raise
        if len(results) == 1:
            return results[0]
        return {name: np.concatenate([r[name] for r in results]) for name in results[0]}

    async def aclose(self) -> None:
        """Stop: queued items get UNAVAILABLE, batches already computing finish first."""
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)  # a dead driver's error is logged already
        self._fail_queued(ModelNotReady(f"step {self.name!r} is shutting down; retry on another replica"))
        await self._running.wait()

    # --- driver -----------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                items, reason = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            process, held = self._process, 1
            if (
                self._process_alone is not None
                and not self._running
                and not self._queue
                and self.alone_policy.run_alone(sum(item.rows for item in items))
            ):
                # nothing computes and nothing waits: the other slots are free, and holding them keeps any batch
                # formed meanwhile from computing beside this one on the cores it uses
                for _ in range(self.concurrency - 1):
                    await self._slots.acquire()
                process, held = self._process_alone, self.concurrency
                self.stats.alone += 1
            self._running.spawn(
                self._execute(items, reason, process, held),
                name=f"batch-{self.name}",
                on_done=functools.partial(self._batch_done, held),
            )

    async def _next_batch(self) -> tuple[list[_Item], str]:
        while True:
            self._drop_cancelled()
            now = time.monotonic()
            plan = form_batch(
                self._queue,
                max_rows=self.max_batch_size,
                max_delay=self.max_queue_delay_s,
                preferred=self.preferred,
                now=now,
                work_conserving=self.policy == "workConserving",
            )
            if plan.expired or plan.take:
                taken = set(plan.take)
                expired = set(plan.expired)
                batch: list[_Item] = []
                keep: deque[_Item] = deque()
                for index, item in enumerate(self._queue):
                    if index in taken:
                        batch.append(item)
                    elif index in expired:
                        self._queued_rows -= item.rows
                        if not item.future.done():
                            item.future.set_exception(
                                DeadlineExceeded(f"step {self.name!r}: the deadline passed while the request was queued")
                            )
                    else:
                        keep.append(item)
                self._queue = keep
                self._queued_rows -= sum(item.rows for item in batch)
                self._depth_changed()
                if batch and plan.reason is not None:
                    return batch, plan.reason
                continue
            self._arrived.clear()
            timeout = None if plan.wake_at is None else max(0.0, plan.wake_at - now)
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:  # not the builtin TimeoutError before Python 3.11
                pass

    async def _execute(self, items: list[_Item], reason: str, process: Process, slots: int) -> None:
        """Compute one batch with `process`, holding `slots` of the batcher's (its busy time counts that many)."""
        started = time.monotonic()
        total = sum(item.rows for item in items)
        self.stats.batches += 1
        self.stats.rows += total
        self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1
        if self._metrics is not None:
            self._metrics.batch_sent(total, reason, [started - item.enqueued for item in items])
        try:
            if len(items) == 1:
                batch = items[0].arrays
            else:
                batch = {name: np.concatenate([item.arrays[name] for item in items]) for name in items[0].arrays}
            outputs = await process(batch)
            for name, array in outputs.items():
                if array.ndim == 0 or array.shape[0] != total:
                    raise StepFailed(
                        f"step {self.name!r} returned {array.shape[0] if array.ndim else 'a scalar'} rows for output "
                        f"{name!r} but the batch has {total}; `process` must return one row per input row"
                    )
        except RequestError as exc:
            self._fan_out(items, exc)
            return
        except Exception:
            log.exception("step %s: computing a batch of %d rows failed", self.name, total)
            self._fan_out(items, StepFailed(f"step {self.name!r} failed computing the batch; see the step's log"))
            return
        except BaseException as exc:  # CancelledError, KeyboardInterrupt...: still answer the batch, then let it go on
            log.error("step %s: computing a batch of %d rows was interrupted (%s)", self.name, total, type(exc).__name__)
            self._fan_out(items, StepFailed(f"step {self.name!r}: computing the batch was interrupted; see the step's log"))
            raise
        finally:
            elapsed = time.monotonic() - started
            if self._metrics is not None:
                self._metrics.batch_computed(elapsed, slots)
        if self._process_alone is not None:  # what running alone gains, from the batches that succeeded
            self.alone_policy.observe(total, elapsed, alone=slots > 1)
        offset = 0
        for item in items:
            if not item.future.done():
                item.future.set_result({name: a[offset : offset + item.rows] for name, a in outputs.items()})
            offset += item.rows

    # --- helpers ----------------------------------------------------------------------------------

    def _fan_out(self, items: list[_Item], error: BaseException) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)

    def _drop_cancelled(self) -> None:
        if any(item.future.done() for item in self._queue):
            kept = deque(item for item in self._queue if not item.future.done())
            self._queued_rows = sum(item.rows for item in kept)
            self._queue = kept
            self._depth_changed()

    def _fail_queued(self, error: RequestError) -> None:
        queue, self._queue = self._queue, deque()
        self._queued_rows = 0
        self._fan_out(list(queue), error)
        self._depth_changed()

    def _depth_changed(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.set(self._queued_rows)

    def _batch_done(self, slots: int, task: asyncio.Task[None]) -> None:
        for _ in range(slots):
            self._slots.release()

    def _loop_done(self, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is None:
            return
        self.failure = error
        self._closed = True
        self._fail_queued(ModelNotReady(self._stopped_message()))  # never computed: safe to retry elsewhere
        if self._on_failure is not None:
            self._on_failure(error)

    def _stopped_message(self) -> str:
        return f"step {self.name!r}: the batcher stopped ({self.failure!r}); this replica is exiting; retry on another"
