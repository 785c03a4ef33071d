"""The dynamic batcher: the pure `form_batch` rule (property-based) and the asyncio driver with fake compute."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor_runtime.errors import DeadlineExceeded, InvalidRequest, ModelNotReady, OpError, QueueFull, StepFailed
from conveyor_runtime.step import Batcher, StepMetrics, batch_key, form_batch
from conveyor_runtime.step.alone_policy import AlonePolicy

Arrays = dict[str, np.ndarray]


@dataclass
class Fake:
    id: int
    rows: int
    key: Hashable
    enqueued: float
    deadline: float | None = None


fakes = st.lists(
    st.tuples(st.integers(1, 6), st.sampled_from(["a", "b", "c"]), st.one_of(st.none(), st.floats(0, 2))),
    max_size=30,
)


def _queue(spec: list[tuple[int, str, float | None]]) -> list[Fake]:
    return [Fake(i, rows, key, enqueued=i * 0.01, deadline=deadline) for i, (rows, key, deadline) in enumerate(spec)]


def _fitting(spec: list[tuple[int, str, float | None]], max_rows: int, preferred: list[int]) -> tuple[list[Fake], list[int]]:
    """The queue's items and the preferred sizes that fit in `max_rows`."""
    return [f for f in _queue(spec) if f.rows <= max_rows], [p for p in preferred if p <= max_rows]


@given(fakes, st.integers(1, 12), st.lists(st.integers(1, 12), max_size=3), st.floats(0, 3))
def test_form_batch_takes_a_fifo_prefix_of_the_leaders_key_within_the_limit(
    spec: list[tuple[int, str, float | None]], max_rows: int, preferred: list[int], now: float
) -> None:
    queue, preferred = _fitting(spec, max_rows, preferred)
    plan = form_batch(queue, max_rows=max_rows, max_delay=0.5, preferred=preferred, now=now)
    expired = {i for i, f in enumerate(queue) if f.deadline is not None and f.deadline <= now}
    assert set(plan.expired) == expired
    live = [i for i in range(len(queue)) if i not in expired]
    if not plan.take:
        assert plan.reason is None
        if live:
            assert plan.wake_at is not None and plan.wake_at > now
        return
    assert plan.take == sorted(plan.take)
    assert plan.take[0] == live[0]
    assert not set(plan.take) & expired
    head_key = queue[live[0]].key
    assert all(queue[i].key == head_key for i in plan.take)
    assert sum(queue[i].rows for i in plan.take) <= max_rows
    same_key = [i for i in live if queue[i].key == head_key]
    assert plan.take == same_key[: len(plan.take)]  # a prefix: no same-key item is skipped
    assert plan.reason in {"full", "preferred", "timeout"}
    if plan.reason == "preferred":
        assert sum(queue[i].rows for i in plan.take) in preferred


@given(fakes, st.integers(1, 12), st.lists(st.integers(1, 12), max_size=3))
def test_form_batch_drains_every_item_exactly_once_in_order(
    spec: list[tuple[int, str, float | None]], max_rows: int, preferred: list[int]
) -> None:
    queue, preferred = _fitting(spec, max_rows, preferred)
    now = 10.0  # every leader has waited past max_delay and every deadline (<= 2) has passed
    seen: list[int] = []
    dropped: list[int] = []
    batches: list[list[Fake]] = []
    while queue:
        plan = form_batch(queue, max_rows=max_rows, max_delay=0.5, preferred=preferred, now=now)
        assert plan.take or plan.expired
        batches.append([queue[i] for i in plan.take])
        seen.extend(queue[i].id for i in plan.take)
        dropped.extend(queue[i].id for i in plan.expired)
        gone = set(plan.take) | set(plan.expired)
        queue = [f for i, f in enumerate(queue) if i not in gone]
    ids = [i for i, (rows, _, _) in enumerate(spec) if rows <= max_rows]
    assert sorted(seen + dropped) == ids
    with_deadline = {i for i, (rows, _, d) in enumerate(spec) if rows <= max_rows and d is not None}
    assert set(dropped) == with_deadline  # all deadlines (<= 2) are before now = 10
    for key in "abc":
        order = [i for i in seen if spec[i][1] == key]
        assert order == sorted(order)
    for batch in batches:
        assert len({f.key for f in batch}) <= 1
        assert sum(f.rows for f in batch) <= max_rows


def test_form_batch_waits_for_more_until_the_delay_passes() -> None:
    queue = [Fake(0, 2, "a", enqueued=1.0), Fake(1, 1, "a", enqueued=1.1)]
    plan = form_batch(queue, max_rows=8, max_delay=0.5, preferred=[], now=1.2)
    assert plan.take == [] and plan.wake_at == pytest.approx(1.5)
    plan = form_batch(queue, max_rows=8, max_delay=0.5, preferred=[], now=1.5)
    assert plan.take == [0, 1] and plan.reason == "timeout"


def test_form_batch_sends_the_largest_reachable_preferred_size_at_once() -> None:
    queue = [Fake(i, 1, "a", enqueued=0.0) for i in range(5)]
    plan = form_batch(queue, max_rows=8, max_delay=10, preferred=[2, 4], now=0.0)
    assert plan.take == [0, 1, 2, 3] and plan.reason == "preferred"


def test_form_batch_sends_full_when_the_next_item_does_not_fit() -> None:
    queue = [Fake(0, 3, "a", 0.0), Fake(1, 2, "b", 0.0), Fake(2, 3, "a", 0.0), Fake(3, 3, "a", 0.0)]
    plan = form_batch(queue, max_rows=8, max_delay=10, preferred=[], now=0.0)
    assert plan.take == [0, 2] and plan.reason == "full"


def test_form_batch_without_batching_sends_each_item_alone() -> None:
    queue = [Fake(0, 4, "a", 0.0), Fake(1, 4, "a", 0.0)]
    plan = form_batch(queue, max_rows=0, max_delay=10, preferred=[], now=0.0)
    assert plan.take == [0] and plan.reason == "single"


# --- the asyncio driver -------------------------------------------------------------------------------


class Recorder:
    """Fake compute: returns each row's id (column 0) times 10, records every batch's rows and key."""

    def __init__(self, gate: asyncio.Event | None = None, fail_on: float | None = None) -> None:
        self.batches: list[tuple[int, Hashable]] = []
        self.gate = gate
        self.fail_on = fail_on
        self.entered = asyncio.Event()

    async def __call__(self, batch: Arrays) -> Arrays:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        x = batch["x"]
        self.batches.append((len(x), batch_key(batch)))
        if self.fail_on is not None and (x[:, 0] == self.fail_on).any():
            raise OpError("row rejected", status="FAILED_PRECONDITION", reason="TEST")
        return {"y": x[:, :1] * 10}


def _request(ident: int, rows: int, width: int) -> Arrays:
    x = np.zeros((rows, width), dtype=np.float32)
    x[:, 0] = ident * 1000 + np.arange(rows)
    return {"x": x}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(st.tuples(st.integers(1, 9), st.sampled_from([2, 3])), min_size=1, max_size=25),
    max_batch=st.integers(1, 8),
    concurrency=st.integers(1, 3),
    delay_us=st.sampled_from([0, 200, 2000]),
)
def test_batcher_answers_every_request_once_in_order_without_oversize_or_mixed_batches(
    requests: list[tuple[int, int]], max_batch: int, concurrency: int, delay_us: int
) -> None:
    async def scenario() -> None:
        compute = Recorder()
        batcher = Batcher(
            compute, max_batch_size=max_batch, max_queue_delay_s=delay_us / 1e6, concurrency=concurrency, max_queue_size=10_000
        )
        await batcher.start()
        try:
            results = await asyncio.gather(
                *(batcher.submit(_request(i, rows, width)) for i, (rows, width) in enumerate(requests))
            )
        finally:
            await batcher.aclose()
        for i, ((rows, _width), result) in enumerate(zip(requests, results)):
            expected = (i * 1000 + np.arange(rows, dtype=np.float32)) * 10
            np.testing.assert_array_equal(result["y"][:, 0], expected)
        assert sum(rows for rows, _ in compute.batches) == sum(rows for rows, _ in requests)
        assert all(rows <= max_batch for rows, _ in compute.batches)
        assert batcher.queued_rows == 0

    asyncio.run(scenario())


async def test_batcher_splits_an_oversize_request_and_reassembles_it() -> None:
    compute = Recorder()
    batcher = Batcher(compute, max_batch_size=4, max_queue_delay_s=0)
    await batcher.start()
    try:
        result = await batcher.submit(_request(7, 11, 2))
    finally:
        await batcher.aclose()
    np.testing.assert_array_equal(result["y"][:, 0], (7000 + np.arange(11)) * 10)
    assert [rows for rows, _ in compute.batches] == [4, 4, 3]


async def test_batcher_never_merges_different_shapes() -> None:
    gate = asyncio.Event()
    compute = Recorder(gate)
    batcher = Batcher(compute, max_batch_size=16, max_queue_delay_s=0.5)
    await batcher.start()
    try:
        first = asyncio.ensure_future(batcher.submit(_request(0, 1, 2)))
        await compute.entered.wait()  # the first batch is computing; the rest queue up together
        rest = [asyncio.ensure_future(batcher.submit(_request(i, 1, 2 + i % 2))) for i in range(1, 7)]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, *rest)
    finally:
        await batcher.aclose()
    keys = [key for _, key in compute.batches]
    assert len(compute.batches) == 3  # [first], then one batch per shape
    assert keys[1] != keys[2]


async def test_batcher_rejects_beyond_max_queue_size_at_once_and_recovers() -> None:
    gate = asyncio.Event()
    compute = Recorder(gate)
    batcher = Batcher(compute, max_batch_size=2, max_queue_delay_s=0, max_queue_size=4)
    await batcher.start()
    try:
        busy = asyncio.ensure_future(batcher.submit(_request(0, 2, 2)))
        await compute.entered.wait()
        queued = [asyncio.ensure_future(batcher.submit(_request(i, 2, 2))) for i in (1, 2)]
        await asyncio.sleep(0)
        assert batcher.queued_rows == 4
        with pytest.raises(QueueFull, match="queue is full"):
            await batcher.submit(_request(3, 1, 2))
        gate.set()
        await asyncio.gather(busy, *queued)
        assert (await batcher.submit(_request(4, 1, 2)))["y"].shape == (1, 1)
    finally:
        await batcher.aclose()


async def test_batcher_drops_expired_items_before_compute() -> None:
    gate = asyncio.Event()
    compute = Recorder(gate)
    batcher = Batcher(compute, max_batch_size=2, max_queue_delay_s=0)
    await batcher.start()
    try:
        busy = asyncio.ensure_future(batcher.submit(_request(0, 1, 2)))
        await compute.entered.wait()
        late = asyncio.ensure_future(batcher.submit(_request(1, 1, 2), deadline=time.monotonic() - 1))
        fine = asyncio.ensure_future(batcher.submit(_request(2, 1, 2), deadline=time.monotonic() + 60))
        await asyncio.sleep(0)
        gate.set()
        with pytest.raises(DeadlineExceeded):
            await late
        await asyncio.gather(busy, fine)
    finally:
        await batcher.aclose()
    assert sum(rows for rows, _ in compute.batches) == 2


async def test_batcher_fans_an_error_out_to_its_batch_only() -> None:
    gate = asyncio.Event()
    compute = Recorder(gate, fail_on=1000.0)
    batcher = Batcher(compute, max_batch_size=2, max_queue_delay_s=0)
    await batcher.start()
    try:
        busy = asyncio.ensure_future(batcher.submit(_request(9, 1, 2)))
        await compute.entered.wait()
        bad = asyncio.ensure_future(batcher.submit(_request(1, 1, 2)))
        mate = asyncio.ensure_future(batcher.submit(_request(2, 1, 2)))
        other = asyncio.ensure_future(batcher.submit(_request(3, 1, 2)))
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(bad, mate, other, busy, return_exceptions=True)
    finally:
        await batcher.aclose()
    assert isinstance(results[0], OpError) and results[0].status == "FAILED_PRECONDITION"
    assert results[1] is results[0]  # the same batch
    assert not isinstance(results[2], BaseException) and not isinstance(results[3], BaseException)


async def test_batcher_checks_that_outputs_have_one_row_per_input_row() -> None:
    async def wrong(batch: Arrays) -> Arrays:
        return {"y": batch["x"][:1]}

    batcher = Batcher(wrong, max_batch_size=4, max_queue_delay_s=0)
    await batcher.start()
    try:
        with pytest.raises(StepFailed, match="returned 1 rows for output 'y' but the batch has 3"):
            await batcher.submit(_request(0, 3, 2))
    finally:
        await batcher.aclose()


async def test_batcher_unexpected_errors_become_internal() -> None:
    async def broken(batch: Arrays) -> Arrays:
        raise ZeroDivisionError("boom")

    batcher = Batcher(broken, max_batch_size=4, max_queue_delay_s=0)
    await batcher.start()
    try:
        with pytest.raises(StepFailed, match="see the step's log"):
            await batcher.submit(_request(0, 1, 2))
    finally:
        await batcher.aclose()


async def test_batcher_drops_cancelled_requests() -> None:
    gate = asyncio.Event()
    compute = Recorder(gate)
    batcher = Batcher(compute, max_batch_size=1, max_queue_delay_s=0)
    await batcher.start()
    try:
        busy = asyncio.ensure_future(batcher.submit(_request(0, 1, 2)))
        await compute.entered.wait()
        gone = asyncio.ensure_future(batcher.submit(_request(1, 1, 2)))
        await asyncio.sleep(0)
        gone.cancel()
        gate.set()
        await busy
        assert (await batcher.submit(_request(2, 1, 2)))["y"][0, 0] == 20000
    finally:
        await batcher.aclose()
    assert [rows for rows, _ in compute.batches] == [1, 1]


async def test_batcher_close_answers_queued_requests_unavailable() -> None:
    gate = asyncio.Event()
    compute = Recorder(gate)
    batcher = Batcher(compute, max_batch_size=1, max_queue_delay_s=0)
    await batcher.start()
    busy = asyncio.ensure_future(batcher.submit(_request(0, 1, 2)))
    await compute.entered.wait()
    queued = asyncio.ensure_future(batcher.submit(_request(1, 1, 2)))
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(batcher.aclose())
    await asyncio.sleep(0)
    gate.set()
    await closing
    assert (await busy)["y"].shape == (1, 1)  # computing work finishes
    with pytest.raises(ModelNotReady):
        await queued
    with pytest.raises(ModelNotReady):
        await batcher.submit(_request(2, 1, 2))


async def test_batcher_without_batching_computes_each_request_alone() -> None:
    compute = Recorder()
    batcher = Batcher(compute, max_batch_size=0, max_queue_delay_s=1.0)
    await batcher.start()
    try:
        await asyncio.gather(*(batcher.submit(_request(i, 3, 2)) for i in range(4)))
    finally:
        await batcher.aclose()
    assert [rows for rows, _ in compute.batches] == [3, 3, 3, 3]


async def test_batcher_records_metrics() -> None:
    metrics = StepMetrics("m")
    batcher = Batcher(Recorder(), name="m", max_batch_size=4, max_queue_delay_s=0, metrics=metrics)
    await batcher.start()
    try:
        await batcher.submit(_request(0, 4, 2))
    finally:
        await batcher.aclose()
    text = metrics.text()
    assert 'conveyor_step_batches_total{reason="full",step="m"} 1.0' in text
    assert 'conveyor_step_batch_size_sum{step="m"} 4.0' in text


def test_batcher_checks_settings_eagerly() -> None:
    with pytest.raises(ValueError, match="preferred batch sizes must be in 1..4, got 8"):
        Batcher(Recorder(), max_batch_size=4, preferred_batch_sizes=[8])


async def test_batcher_request_larger_than_the_whole_queue_is_invalid_not_retryable() -> None:
    compute = Recorder()
    batcher = Batcher(compute, max_batch_size=2, max_queue_delay_s=0, max_queue_size=4)
    await batcher.start()
    try:
        with pytest.raises(InvalidRequest, match="5 rows.*maxQueueSize is 4") as info:
            await batcher.submit(_request(0, 5, 2))
        assert info.value.status == "INVALID_ARGUMENT"
        assert (await batcher.submit(_request(1, 4, 2)))["y"].shape == (4, 1)
    finally:
        await batcher.aclose()


class Abort(BaseException):
    """Not an Exception: what a careless async op might raise (or KeyboardInterrupt-like faults)."""


@pytest.mark.parametrize("fault", [Abort, asyncio.CancelledError])
async def test_batcher_base_exception_from_async_process_still_answers_its_whole_batch(fault: type[BaseException]) -> None:
    gate = asyncio.Event()
    blocker = Recorder(gate)

    async def process(batch: Arrays) -> Arrays:
        if batch["x"][0, 0] == 0:  # the first batch holds the queue while the others line up behind it
            return await blocker(batch)
        raise fault()

    batcher = Batcher(process, max_batch_size=4, max_queue_delay_s=0)
    await batcher.start()
    try:
        first = asyncio.ensure_future(batcher.submit(_request(0, 1, 2)))
        await blocker.entered.wait()
        batch = [asyncio.ensure_future(batcher.submit(_request(i, 1, 2))) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*batch, return_exceptions=True), 30)
        assert (await first)["y"].shape == (1, 1)
        assert all(isinstance(r, StepFailed) for r in results), results
        assert (await batcher.submit(_request(0, 1, 2)))["y"].shape == (1, 1)  # the batcher carries on
    finally:
        await batcher.aclose()


async def test_batcher_death_fails_queued_requests_retryably_and_reports_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import conveyor_runtime.step.batcher as batcher_module

    real = batcher_module.form_batch

    def broken(queue: list[object], **kwargs: object) -> object:
        if queue:
            raise RuntimeError("injected")
        return real(queue, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(batcher_module, "form_batch", broken)
    died: list[BaseException] = []
    batcher = Batcher(Recorder(), name="m", max_batch_size=4, max_queue_delay_s=0)
    await batcher.start(on_failure=died.append)
    try:
        with pytest.raises(ModelNotReady, match="batcher stopped"):
            await asyncio.wait_for(batcher.submit(_request(0, 1, 2)), 30)
        assert [str(e) for e in died] == ["injected"]
        with pytest.raises(ModelNotReady, match="batcher stopped"):
            await batcher.submit(_request(1, 1, 2))
    finally:
        await batcher.aclose()


# --- policy: work-conserving (default) vs fill -----------------------------------------------------------


def test_form_batch_work_conserving_takes_what_is_queued_at_once() -> None:
    queue = [Fake(0, 2, "a", enqueued=1.0), Fake(1, 1, "b", enqueued=1.0), Fake(2, 1, "a", enqueued=1.1)]
    plan = form_batch(queue, max_rows=8, max_delay=3600, preferred=[], now=1.1, work_conserving=True)
    assert plan.take == [0, 2] and plan.reason == "idle" and plan.wake_at is None


def test_form_batch_work_conserving_still_sends_full_and_preferred_batches_as_such() -> None:
    full = [Fake(i, 2, "a", enqueued=0.0) for i in range(5)]
    plan = form_batch(full, max_rows=8, max_delay=3600, preferred=[], now=0.0, work_conserving=True)
    assert plan.take == [0, 1, 2, 3] and plan.reason == "full"
    three = [Fake(i, 1, "a", enqueued=0.0) for i in range(3)]
    plan = form_batch(three, max_rows=8, max_delay=3600, preferred=[2], now=0.0, work_conserving=True)
    assert plan.take == [0, 1] and plan.reason == "preferred"


def test_form_batch_work_conserving_waits_only_for_an_item() -> None:
    plan = form_batch([], max_rows=8, max_delay=3600, preferred=[], now=0.0, work_conserving=True)
    assert plan.take == [] and plan.wake_at is None
    expired = [Fake(0, 1, "a", enqueued=0.0, deadline=0.5)]
    plan = form_batch(expired, max_rows=8, max_delay=3600, preferred=[], now=1.0, work_conserving=True)
    assert plan.take == [] and plan.expired == [0] and plan.wake_at is None


async def test_batcher_work_conserving_sends_a_lone_request_without_waiting_out_the_delay() -> None:
    compute = Recorder()
    batcher = Batcher(compute, max_batch_size=8, max_queue_delay_s=3600, policy="workConserving")
    await batcher.start()
    try:
        result = await asyncio.wait_for(batcher.submit(_request(3, 1, 2)), 30)  # fill would hold it for an hour
    finally:
        await batcher.aclose()
    assert result["y"][0, 0] == 30000
    assert [rows for rows, _ in compute.batches] == [1] and batcher.stats.reasons == {"idle": 1}


async def test_batcher_work_conserving_fills_batches_while_every_instance_is_busy() -> None:
    gate = asyncio.Event()
    compute = Recorder(gate)
    batcher = Batcher(compute, max_batch_size=8, max_queue_delay_s=3600, policy="workConserving", concurrency=1)
    await batcher.start()
    try:
        first = asyncio.ensure_future(batcher.submit(_request(0, 1, 2)))
        await compute.entered.wait()  # the only instance is busy: what arrives now queues up
        rest = [asyncio.ensure_future(batcher.submit(_request(i, 1, 2))) for i in range(1, 11)]
        await asyncio.sleep(0)
        assert batcher.queued_rows == 10
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, *rest), 30)
    finally:
        await batcher.aclose()
    assert [rows for rows, _ in compute.batches] == [1, 8, 2]
    assert batcher.stats.reasons == {"idle": 2, "full": 1}


async def test_batcher_fill_policy_holds_a_batch_for_more_despite_an_idle_instance() -> None:
    compute = Recorder()
    batcher = Batcher(compute, max_batch_size=4, max_queue_delay_s=3600, policy="fill")
    await batcher.start()
    try:
        first = asyncio.ensure_future(batcher.submit(_request(0, 1, 2)))
        for _ in range(5):  # let the driver see the lone item (work-conserving would send it here)
            await asyncio.sleep(0)
        assert compute.batches == [] and batcher.queued_rows == 1
        rest = [asyncio.ensure_future(batcher.submit(_request(i, 1, 2))) for i in range(1, 4)]
        await asyncio.wait_for(asyncio.gather(first, *rest), 30)
    finally:
        await batcher.aclose()
    assert [rows for rows, _ in compute.batches] == [4] and batcher.stats.reasons == {"full": 1}


def test_batcher_checks_the_policy_eagerly() -> None:
    with pytest.raises(ValueError, match="policy must be 'workConserving' or 'fill', got 'eager'"):
        Batcher(Recorder(), policy="eager")


@given(fakes, st.integers(1, 12), st.lists(st.integers(1, 12), max_size=3), st.floats(0, 3))
def test_form_batch_work_conserving_never_leaves_a_free_instance_idle_with_live_items(
    spec: list[tuple[int, str, float | None]], max_rows: int, preferred: list[int], now: float
) -> None:
    queue, preferred = _fitting(spec, max_rows, preferred)
    plan = form_batch(queue, max_rows=max_rows, max_delay=3600, preferred=preferred, now=now, work_conserving=True)
    filling = form_batch(queue, max_rows=max_rows, max_delay=3600, preferred=preferred, now=now)
    live = [i for i, f in enumerate(queue) if f.deadline is None or f.deadline > now]
    assert bool(plan.take) == bool(live) and plan.wake_at is None
    assert plan.expired == filling.expired
    if filling.take:  # full or preferred: the same batch either way
        assert (plan.take, plan.reason) == (filling.take, filling.reason)
    elif plan.take:
        assert plan.reason == "idle" and plan.take[0] == live[0]


async def test_batcher_runs_a_batch_alone_when_nothing_computes_or_waits_and_side_by_side_under_load() -> None:
    gate = asyncio.Event()
    alone, beside = Recorder(gate), Recorder()
    metrics = StepMetrics("m")
    batcher = Batcher(beside, name="m", max_batch_size=2, concurrency=2, process_alone=alone, metrics=metrics)
    await batcher.start()
    try:
        first = asyncio.ensure_future(batcher.submit(_request(0, 1, 2)))
        await alone.entered.wait()  # an idle step: the lone request runs on the session with every thread
        rest = [asyncio.ensure_future(batcher.submit(_request(i, 1, 2))) for i in range(1, 4)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert batcher.queued_rows == 3 and not beside.entered.is_set(), "nothing computes beside a batch run alone"
        gate.set()
        answers = await asyncio.wait_for(asyncio.gather(first, *rest), 30)
    finally:
        await batcher.aclose()
    assert [a["y"][0, 0] for a in answers] == [0, 10000, 20000, 30000]
    assert [rows for rows, _ in alone.batches] == [1]
    assert [rows for rows, _ in beside.batches] == [2, 1]  # three queued: two batches, side by side
    assert batcher.stats.alone == 1
    text = metrics.text()
    assert 'conveyor_step_alone_batches_total{step="m"} 1.0' in text
    samples = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("conveyor_step")}
    compute, busy = samples['conveyor_step_compute_seconds_sum{step="m"}'], samples['conveyor_step_busy_seconds_total{step="m"}']
    assert compute < busy < 2 * compute + 1e-9  # the batch run alone held both instances


async def test_batcher_with_one_slot_never_runs_a_batch_alone() -> None:
    alone, beside = Recorder(), Recorder()
    batcher = Batcher(beside, max_batch_size=2, concurrency=1, process_alone=alone)
    await batcher.start()
    try:
        await batcher.submit(_request(0, 1, 2))
    finally:
        await batcher.aclose()
    assert (len(alone.batches), len(beside.batches), batcher.stats.alone) == (0, 1, 0)


class Sleeper:
    """Fake compute taking `seconds` per batch; counts its batches."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.batches = 0

    async def __call__(self, batch: Arrays) -> Arrays:
        self.batches += 1
        await asyncio.sleep(self.seconds)
        return {"y": batch["x"][:, :1]}


async def test_batcher_stops_running_lone_batches_alone_where_alone_was_not_faster() -> None:
    alone, beside = Sleeper(0.06), Sleeper(0.02)  # two threads gaining nothing: a contended node
    batcher = Batcher(beside, max_batch_size=1, concurrency=2, process_alone=alone)
    batcher.alone_policy = AlonePolicy(recheck_every=1000)
    batcher.alone_policy.observe(1, 0.02, alone=False)  # as moderate load would have measured it
    await batcher.start()
    try:
        await batcher.submit(_request(0, 1, 2))  # lone, and running alone was never measured: it runs alone
        assert alone.batches == 1
        for i in range(1, 4):  # measured slower than an instance: later lone requests run on an instance
            await batcher.submit(_request(i, 1, 2))
    finally:
        await batcher.aclose()
    assert (alone.batches, beside.batches, batcher.stats.alone) == (1, 3, 1)
    speedup = batcher.alone_policy.speedup(1)
    assert speedup is not None and speedup < 1  # both times as the batcher measured them
