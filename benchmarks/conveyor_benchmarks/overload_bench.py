"""`conveyor bench overload`: a running pipeline offered a multiple of its capacity (open loop).

Reports the offered and accepted rates, accepted latency next to a reference level below capacity, how fast
rejections (RESOURCE_EXHAUSTED) come back, and the memory of the gateway and step processes before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import yaml

from conveyor_runtime.protocol import InferenceStub, encode_tensors, pb
from conveyor_runtime.spec import load_manifest

from .load import closed_loop, percentile
from .local_pipeline import LocalPipeline, process_pids
from .pipeline_bench import _fmt, _table, add_payload_arguments, make_payloads

__all__ = ["OpenLoopResult", "open_loop_by_code", "register", "rss_mb", "run", "with_queue_sizes"]


def register(modes: Any) -> None:
    parser: argparse.ArgumentParser = modes.add_parser(
        "overload", help="offer a pipeline a multiple of its capacity: accepted vs rejected latency, memory"
    )
    parser.add_argument("manifest", help="the pipeline manifest (started with `conveyor run` unless --addresses is given)")
    parser.add_argument("--addresses", help="attach to a running `conveyor run --addresses-json FILE` instead of starting one")
    parser.add_argument("--replicas", action="append", default=[], metavar="STEP=N", help="passed to `conveyor run`")
    parser.add_argument(
        "--max-queue-size", action="append", default=[], metavar="STEP=N",
        help="run with this step's batching.maxQueueSize instead of the manifest's (repeatable)",
    )
    parser.add_argument("--factor", type=float, default=3.0, help="offered load as a multiple of capacity (default 3)")
    parser.add_argument("--reference", type=float, default=0.7, help="reference level as a multiple of capacity (0: skip)")
    parser.add_argument("--capacity", type=float, help="capacity in requests/s (default: measured, closed loop)")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop clients that measure capacity (default 16)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per level (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each level (default 3)")
    parser.add_argument("--timeout", type=float, default=10.0, help="each request's deadline in seconds (default 10)")
    parser.add_argument("--channels", type=int, default=4, help="client connections (default 4)")
    add_payload_arguments(parser)
    parser.add_argument("--json", dest="json_out", help="also write every figure to this JSON file")
    parser.set_defaults(handler=run)


# --- open loop, answers kept per status ------------------------------------------------------------------------


@dataclass
class OpenLoopResult:
    """One open-loop level: what was offered and, per gRPC status, each answer's latency (seconds)."""

    rate: float
    seconds: float
    sent: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    send_lag: list[float] = field(default_factory=list)
    #: Round trips of requests for an unknown model, refused by the gateway before any work: the floor under
    #: this load (client, transport, gateway event loop and the machine's scheduling).
    floor: list[float] = field(default_factory=list)

    def count(self, code: str) -> int:
        return len(self.latencies.get(code, []))

    def per_s(self, code: str) -> float:
        return self.count(code) / self.seconds if self.seconds > 0 else 0.0

    def ms(self, code: str, q: float) -> float:
        return percentile(self.latencies.get(code, []), q) * 1000.0

    def others(self) -> dict[str, int]:
        return {code: len(v) for code, v in self.latencies.items() if code not in ("OK", "RESOURCE_EXHAUSTED")}


async def open_loop_by_code(
    address: str,
    make_request: Callable[[int], pb.ModelInferRequest],
    *,
    rate: float,
    duration_s: float,
    warmup_s: float,
    timeout_s: float,
    channels: int,
    floor_rate: float = 5.0,
) -> OpenLoopResult:
    """Send at `rate` whatever the answers; each answer's latency counts from its scheduled send time.

    Beside them, `floor_rate` requests/s name an unknown model (NOT_FOUND at once); their round trips go to
    `floor`, which tells how much of a rejection's time is the gateway's and how much the machine's.
    """
    if rate <= 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    result = OpenLoopResult(rate, duration_s)
    pool = [grpc.aio.insecure_channel(address) for _ in range(max(1, channels))]
    stubs = [InferenceStub(channel) for channel in pool]
    begin = time.monotonic()
    start, end = begin + warmup_s, begin + warmup_s + duration_s
    tasks: set[asyncio.Task[None]] = set()

    async def one(n: int, scheduled: float) -> None:
        try:
            await stubs[n % len(stubs)].ModelInfer(make_request(n), timeout=timeout_s)
            code = "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        if scheduled >= start:
            result.latencies.setdefault(code, []).append(time.monotonic() - scheduled)

    async def floor() -> None:
        unknown = pb.ModelInferRequest(model_name="no-such-model")
        n = 0
        while True:
            scheduled = begin + n / floor_rate
            if scheduled >= end:
                return
            await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
            sent = time.monotonic()
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stubs[n % len(stubs)].ModelInfer(unknown, timeout=timeout_s)
            if scheduled >= start:
                result.floor.append(time.monotonic() - sent)
            n += 1

    floor_task = asyncio.create_task(floor()) if floor_rate > 0 else None
    try:
        n = 0
        while True:
            scheduled = begin + n / rate
            if scheduled >= end:
                break
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif scheduled >= start:
                result.send_lag.append(-delay)
            if scheduled >= start:
                result.sent += 1
            task = asyncio.create_task(one(n, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s + 5)
    finally:
        for task in tasks:
            task.cancel()
        if floor_task is not None:
            floor_task.cancel()
            tasks.add(floor_task)
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in pool:
            await channel.close()
    return result


# --- processes ---------------------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (NaN once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return math.nan


def with_queue_sizes(manifest_path: Path, sizes: list[str], workdir: Path) -> Path:
    """A copy of the manifest with some steps' maxQueueSize replaced (model paths made absolute)."""
    if not sizes:
        return manifest_path
    document = yaml.safe_load(manifest_path.read_text())
    steps = {step["name"]: step for step in document["spec"]["steps"]}
    for value in sizes:
        name, _, size = value.partition("=")
        if name not in steps or not size.isdigit():
            raise SystemExit(f"--max-queue-size {value!r}: expected STEP=N with STEP one of {', '.join(steps)}")
        steps[name].setdefault("batching", {})["maxQueueSize"] = int(size)
    for step in steps.values():
        model = step.get("model")
        if model and not Path(model["path"]).is_absolute():
            model["path"] = str((manifest_path.parent / model["path"]).resolve())
    copy = workdir / manifest_path.name
    copy.write_text(yaml.safe_dump(document, sort_keys=False))
    load_manifest(copy)  # the override must still be a valid manifest
    return copy


# --- the command -------------------------------------------------------------------------------------------------


@dataclass
class _Memory:
    pids: dict[str, int]
    start: dict[str, float] = field(default_factory=dict)
    after_level: list[dict[str, float]] = field(default_factory=list)
    peak: dict[str, float] = field(default_factory=dict)
    end: dict[str, float] = field(default_factory=dict)

    def sample(self, into: dict[str, float]) -> None:
        for name, pid in self.pids.items():
            into[name] = rss_mb(pid)
            self.peak[name] = max(self.peak.get(name, 0.0), into[name])


async def _watch_memory(memory: _Memory, stop: asyncio.Event) -> None:
    while not stop.is_set():
        memory.sample({})
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


async def _measure(
    addresses: dict[str, Any], requests: list[pb.ModelInferRequest], memory: _Memory, args: argparse.Namespace
) -> tuple[float, list[OpenLoopResult]]:
    def make_request(n: int) -> pb.ModelInferRequest:
        return requests[n % len(requests)]

    capacity = args.capacity
    if capacity is None:
        print(f"  capacity: closed loop, {args.concurrency} clients, {args.duration / 2:g}s ...", flush=True)
        closed = await closed_loop(
            addresses["grpc"], make_request, concurrency=args.concurrency, duration_s=args.duration / 2,
            warmup_s=args.warmup, timeout_s=args.timeout, channels=args.channels,
        )
        capacity = closed.requests_per_s
        print(f"  capacity {capacity:.1f} req/s (errors: {closed.errors or 0})", flush=True)
    factors = [f for f in (args.reference, args.factor) if f > 0]
    results = []
    memory.sample(memory.start)
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch_memory(memory, stop))
    try:
        for factor in factors:
            rate = capacity * factor
            print(f"  open loop at {factor:g}x = {rate:.1f} req/s for {args.duration:g}s ...", flush=True)
            results.append(
                await open_loop_by_code(
                    addresses["grpc"], make_request, rate=rate, duration_s=args.duration, warmup_s=args.warmup,
                    timeout_s=args.timeout, channels=args.channels,
                )
            )
            memory.after_level.append({})
            memory.sample(memory.after_level[-1])
    finally:
        stop.set()
        await watcher
    await asyncio.sleep(1.0)  # let the last answers' buffers go before reading memory again
    memory.sample(memory.end)
    return capacity, results


def run(args: argparse.Namespace) -> int:
    manifest_path = Path(args.manifest).resolve()
    manifest = load_manifest(manifest_path)
    width, _, height = args.frame.partition("x")
    payloads = make_payloads(manifest, args.payload, args.rows, (int(width), int(height)))
    requests = []
    for payload in payloads:
        request = pb.ModelInferRequest(model_name=manifest.metadata.name)
        encode_tensors(request, [("image", payload)])
        requests.append(request)
    with tempfile.TemporaryDirectory(prefix="conveyor-overload-") as workdir:
        pipeline = None
        if args.addresses:
            addresses = json.loads(Path(args.addresses).read_text())
            found = process_pids(addresses)
        else:
            runnable = with_queue_sizes(manifest_path, args.max_queue_size, Path(workdir))
            pipeline = LocalPipeline.start(runnable, Path(workdir), replicas=args.replicas, http=False)
            addresses = pipeline.addresses()
            found = pipeline.pids()
        pids = {("gateway (conveyor run)" if k == "gateway" else k): v for k, v in found.items()}
        memory = _Memory(pids)
        try:
            print(f"load on {addresses['grpc']} ({args.rows} row(s)/request, deadline {args.timeout:g}s):", flush=True)
            capacity, results = asyncio.run(_measure(addresses, requests, memory, args))
        finally:
            if pipeline is not None:
                pipeline.stop()
    _report(manifest.metadata.name, capacity, results, memory, args)
    return 0


def _report(
    pipeline: str, capacity: float, results: list[OpenLoopResult], memory: _Memory, args: argparse.Namespace
) -> None:
    print()
    print(f"pipeline {pipeline}: capacity {capacity:.1f} req/s; open loop, {args.duration:g}s per level")
    rows = [["offered", "sent/s", "ok/s", "ok p50", "ok p99", "rejected/s", "rej p50", "rej p99", "rej max", "floor p50",
             "floor p99", "other"]]
    for r in results:
        rows.append(
            [
                f"{r.rate:.1f}/s ({r.rate / capacity:.1f}x)",
                _fmt(r.sent / r.seconds),
                _fmt(r.per_s("OK")),
                _fmt(r.ms("OK", 50)),
                _fmt(r.ms("OK", 99)),
                _fmt(r.per_s("RESOURCE_EXHAUSTED")),
                _fmt(r.ms("RESOURCE_EXHAUSTED", 50)),
                _fmt(r.ms("RESOURCE_EXHAUSTED", 99)),
                _fmt(r.ms("RESOURCE_EXHAUSTED", 100)),
                _fmt(percentile(r.floor, 50) * 1000),
                _fmt(percentile(r.floor, 99) * 1000),
                json.dumps(r.others()) if r.others() else "0",
            ]
        )
    print(_table(rows))
    print("(ms, from each request's scheduled send time; floor: a request for an unknown model, refused before any work)")
    late = [r for r in results if r.send_lag and percentile(r.send_lag, 99) > 0.01]
    for r in late:
        print(f"note: the load generator fell behind at {r.rate:.1f}/s (send lag p99 {percentile(r.send_lag, 99) * 1000:.0f} ms)")
    levels = [f"after {r.rate / capacity:.1f}x" for r in results]
    mem_rows = [["process (RSS MiB)", "start", *levels, "peak", "end"]]
    for name in memory.pids:
        marks = [memory.start, *memory.after_level, memory.peak, memory.end]
        mem_rows.append([name, *(_fmt(mark.get(name, math.nan)) for mark in marks)])
    print()
    print(_table(mem_rows))
    if args.json_out:
        summary = {
            "pipeline": pipeline,
            "capacity_per_s": capacity,
            "levels": [
                {
                    "offered_per_s": r.rate,
                    "sent_per_s": r.sent / r.seconds,
                    "ok_per_s": r.per_s("OK"),
                    "ok_p50_ms": r.ms("OK", 50),
                    "ok_p99_ms": r.ms("OK", 99),
                    "rejected_per_s": r.per_s("RESOURCE_EXHAUSTED"),
                    "rejected_p50_ms": r.ms("RESOURCE_EXHAUSTED", 50),
                    "rejected_p99_ms": r.ms("RESOURCE_EXHAUSTED", 99),
                    "floor_p50_ms": percentile(r.floor, 50) * 1000,
                    "floor_p99_ms": percentile(r.floor, 99) * 1000,
                    "other_errors": r.others(),
                }
                for r in results
            ],
            "rss_mib": {"start": memory.start, "after_level": memory.after_level, "peak": memory.peak, "end": memory.end},
        }
        Path(args.json_out).write_text(json.dumps(summary, indent=2, default=str))
