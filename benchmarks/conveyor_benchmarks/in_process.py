"""The in-process baseline of `conveyor bench pipeline`: the pipeline's steps run in this process, in the best layout
we know for the same cores, so that "x% of in-process" is a ratio a skeptical reader accepts.

Layouts tried (each at every batch size): ``sequential`` (one thread runs the steps one after another, each model
one session on all cores whose threads spin while it runs), ``parallel`` (one thread per core, each running whole pipelines on its own batches, a
single-threaded model session each) and ``pipelined`` (one stage per step, each with a thread per core, handing
batches on through queues; single-threaded model sessions). The best rows/s is the baseline; every figure is shown.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from conveyor_runtime.spec import ExecutionPlan, StepSpec, load_manifest, route_inputs

__all__ = ["LAYOUTS", "BaselinePoint", "Layout", "best", "in_process_baseline", "layouts_for", "remeasure"]

Batch = npt.NDArray[Any]
Produced = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Layout:
    """How the steps are laid out on threads: `threads` per worker pool, model sessions of `intra` threads each."""

    name: str
    threads: int
    intra: int

    @property
    def spins(self) -> bool:
        """Whether its model sessions spin while they run: a multi-threaded session that computes one batch at a time,
        as a step's lone-batch session does (on a VM that spares a wake-up of the idle core between ops: 0.3-0.4 ms of a
        ResNet-18 batch)."""
        return self.intra > 1

    def describe(self) -> str:
        if self.name == "sequential":
            spinning = ", spinning while it runs" if self.spins else ""
            return f"sequential: 1 thread, steps one after another, each model 1 session x {self.intra} threads{spinning}"
        if self.name == "parallel":
            return f"parallel: {self.threads} threads each running whole pipelines, {self.threads} model sessions x 1 thread"
        return f"pipelined: a stage per step, {self.threads} threads each, {self.threads} model sessions x 1 thread"


LAYOUTS = ("sequential", "parallel", "pipelined")


def layouts_for(cores: int, names: list[str] | tuple[str, ...] = LAYOUTS) -> list[Layout]:
    """The layouts to try on `cores` CPUs (parallel and pipelined only when there is more than one core)."""
    chosen = []
    for name in names:
        if name == "sequential":
            chosen.append(Layout(name, 1, cores))
        elif cores > 1 or name == "pipelined":
            chosen.append(Layout(name, cores, 1))
    return chosen


@dataclass
class BaselinePoint:
    """One layout at one batch size: rows/s and, for the one-thread layout, each call's latency (seconds)."""

    layout: Layout
    batch: int
    rows_per_s: float
    latencies: list[float] = field(default_factory=list)
    cpu_ms_per_row: float = float("nan")

    def latency_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000.0 if self.latencies else float("nan")


def best(points: list[BaselinePoint]) -> BaselinePoint:
    return max(points, key=lambda p: p.rows_per_s)


def _spec_for(step: StepSpec, layout: Layout) -> StepSpec:
    if step.model is None:
        return step
    instances = 1 if layout.name == "sequential" else layout.threads
    model = step.model.model_copy(update={"instances": instances, "intraOpThreads": layout.intra, "interOpThreads": 0})
    return step.model_copy(update={"model": model})


@contextlib.contextmanager
def _quiet_runtime() -> Iterator[None]:
    """The runtime's INFO lines (each model's sessions) off while the baseline loads its ops: it loads them again next
    to every load level, and the bench's own progress lines say what runs."""
    logger = logging.getLogger("conveyor_runtime")
    level = logger.level
    logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(level)


class _Steps:
    """The pipeline's ops, loaded for one layout; `run(name, produced, batch)` computes one step of one batch."""

    def __init__(self, manifest_path: Path, layout: Layout) -> None:
        from conveyor_runtime.step import load_step_op

        manifest = load_manifest(manifest_path)
        self.plan = ExecutionPlan.from_manifest(manifest)
        with _quiet_runtime():
            self.ops = {
                name: load_step_op(_spec_for(self.plan.nodes[name].spec, layout), manifest_path.parent, spin=layout.spins)
                for name in self.plan.order
            }
        self.expected = {name: [t.name for t in op.inputs] or None for name, op in self.ops.items()}

    def run(self, name: str, produced: Produced, batch: Batch) -> None:
        from conveyor_runtime.ops import RequestContext, Skip

        node = self.plan.nodes[name]
        if not node.inputs:
            inputs = {(self.expected[name] or ["image"])[0]: batch}
        else:
            inputs = route_inputs(name, [(u, produced[u]) for u in node.inputs], self.expected[name])
        op = self.ops[name]
        context = RequestContext(id="baseline")
        prepared = op.preprocess(inputs, context)
        outputs = prepared.outputs if isinstance(prepared, Skip) else op.process(prepared)
        produced[name] = op.postprocess(outputs, context)

    def run_all(self, batch: Batch) -> None:
        produced: Produced = {}
        for name in self.plan.order:
            self.run(name, produced, batch)

    def close(self) -> None:
        for op in self.ops.values():
            op.close()


def _batches(payloads: list[Batch], size: int) -> list[Batch]:
    pool = np.concatenate(payloads)
    batches = [pool[(i * size) % len(pool) :][:size] for i in range(8)]
    return [b if len(b) == size else np.concatenate([b, pool[: size - len(b)]]) for b in batches]


def _whole_pipelines(steps: _Steps, batches: list[Batch], threads: int, seconds: float) -> tuple[float, list[float]]:
    """`threads` threads each run whole pipelines; rows/s, and each call's latency when there is one thread."""
    rows = [0] * threads
    latencies: list[float] = []
    start = time.monotonic()
    stop = start + seconds

    def worker(index: int) -> None:
        i = index
        while time.monotonic() < stop or (threads == 1 and i < 3):
            began = time.perf_counter()
            steps.run_all(batches[i % len(batches)])
            if threads == 1:
                latencies.append(time.perf_counter() - began)
            rows[index] += len(batches[i % len(batches)])
            i += threads

    _run_threads([functools.partial(worker, i) for i in range(threads)])
    return sum(rows) / (time.monotonic() - start), latencies


def _pipelined(steps: _Steps, batches: list[Batch], threads: int, seconds: float) -> float:
    """One stage per step (in topological order), `threads` threads per stage, bounded queues between stages."""
    order = steps.plan.order
    queues: list[queue.Queue[tuple[Produced, Batch]]] = [queue.Queue(maxsize=2 * threads) for _ in order]
    done = [0]
    lock = threading.Lock()
    start = time.monotonic()
    stop = start + seconds
    counter = iter(range(1 << 62))

    def take(q: queue.Queue[tuple[Produced, Batch]]) -> tuple[Produced, Batch] | None:
        while time.monotonic() < stop:
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                continue
        return None

    def put(q: queue.Queue[tuple[Produced, Batch]], item: tuple[Produced, Batch]) -> bool:
        while time.monotonic() < stop:
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def stage(index: int) -> None:
        name = order[index]
        while time.monotonic() < stop:
            if index == 0:
                batch = batches[next(counter) % len(batches)]
                item: tuple[Produced, Batch] | None = ({}, batch)
            else:
                item = take(queues[index])
            if item is None:
                return
            produced, batch = item
            steps.run(name, produced, batch)
            if index + 1 < len(order):
                if not put(queues[index + 1], (produced, batch)):
                    return
            elif time.monotonic() < stop:
                with lock:
                    done[0] += len(batch)

    _run_threads([functools.partial(stage, s) for s in range(len(order)) for _ in range(threads)])
    return done[0] / (time.monotonic() - start)


def _run_threads(targets: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    workers = [threading.Thread(target=guarded, args=(t,), daemon=True) for t in targets]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]


def _measure(steps: _Steps, layout: Layout, size: int, payloads: list[Batch], seconds: float) -> BaselinePoint:
    batches = _batches(payloads, size)
    for _ in range(max(2, layout.threads)):
        steps.run_all(batches[0])  # warm up this size on every session
    cpu, began = time.process_time(), time.monotonic()
    if layout.name == "pipelined":
        point = BaselinePoint(layout, size, _pipelined(steps, batches, layout.threads, seconds))
    else:
        rate, latencies = _whole_pipelines(steps, batches, layout.threads, seconds)
        point = BaselinePoint(layout, size, rate, latencies)
    rows = point.rows_per_s * (time.monotonic() - began)
    point.cpu_ms_per_row = 1000.0 * (time.process_time() - cpu) / rows if rows else float("nan")
    return point


def in_process_baseline(
    manifest_path: Path,
    payloads: list[Batch],
    batch_sizes: list[int],
    layouts: list[Layout],
    seconds: float = 5.0,
    progress: Callable[[str], None] = lambda _: None,
) -> list[BaselinePoint]:
    """Rows/s of the pipeline's steps in this process, for every layout and batch size (batch-1 latencies too)."""
    points = []
    for layout in layouts:
        steps = _Steps(manifest_path, layout)
        try:
            for size in batch_sizes:
                progress(f"  {layout.name} at batch {size} ...")
                points.append(_measure(steps, layout, size, payloads, seconds))
        finally:
            steps.close()
    return points


def remeasure(manifest_path: Path, payloads: list[Batch], points: list[BaselinePoint], seconds: float) -> list[BaselinePoint]:
    """The given points measured again now: next to a load level, so that drift on a shared machine hits both."""
    again = []
    for point in points:
        steps = _Steps(manifest_path, point.layout)
        try:
            again.append(_measure(steps, point.layout, point.batch, payloads, seconds))
        finally:
            steps.close()
    return again
