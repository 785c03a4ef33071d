"""`conveyor bench step`: one model step under closed-loop gRPC load, next to the same model run in-process.

The step runs as a subprocess (its own GIL, like in a pod); C concurrent clients each send one request,
wait for the answer and send the next. Then ONNX Runtime runs the model in this process at the realized
batch size with the step's layout (as many sessions, each on its own thread, with the step's intra-op threads),
once with thread spinning off as the step runs it and once with ONNX Runtime's default (on); the faster is the
baseline, and both are shown. It also shows CPU time per item (server vs in-process), which stays comparable when
other work shares the machine and skews wall-clock rates.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from conveyor_runtime.serving import free_port

from .cpu import cpu_seconds

__all__ = ["StepBenchResult", "register", "run"]


def register(modes: Any) -> None:
    parser: argparse.ArgumentParser = modes.add_parser(
        "step", help="one model step under closed-loop load vs the same model in-process (ONNX Runtime)"
    )
    parser.add_argument("--model", type=Path, help="ONNX file to serve (default: build a ResNet with --depth/--image-size)")
    parser.add_argument("--depth", type=int, default=18, choices=[18, 34, 50], help="ResNet depth to build (default 18)")
    parser.add_argument(
        "--image-size", type=int, default=224, help="input side of the built ResNet (default 224, as served in practice)"
    )
    parser.add_argument("--max-batch", type=int, default=8, help="step's batching.maxBatchSize (default 8)")
    parser.add_argument("--delay-us", type=int, default=2000, help="batching.maxQueueDelayMicroseconds (default 2000)")
    parser.add_argument(
        "--policy", default="workConserving", choices=["workConserving", "fill"], help="batching.policy (default workConserving)"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent closed-loop clients (default 16)")
    parser.add_argument("--client-batch", type=int, default=1, help="rows per request (default 1)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of measured load (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring (default 3)")
    parser.add_argument("--instances", type=int, default=1, help="model instances in the step (default 1)")
    parser.add_argument("--intra-threads", type=int, default=0, help="ONNX Runtime intra-op threads (default 0 = auto)")
    parser.add_argument("--in-process-server", action="store_true", help="run the step in this process (default: subprocess)")
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="model.device of the step (with resources.gpu 1) and the provider of the in-process baseline (default cpu)",
    )
    parser.set_defaults(handler=run)


@dataclass
class StepBenchResult:
    items: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    mean_batch: float
    in_process_batch: int
    in_process_items_per_s: float
    in_process_how: str = ""
    server_cpu_ms: float = math.nan
    client_cpu_ms: float = math.nan
    in_process_cpu_ms: float = math.nan

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else math.nan

    @property
    def ratio(self) -> float:
        return self.items_per_s / self.in_process_items_per_s if self.in_process_items_per_s else math.nan


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def _model_path(args: argparse.Namespace) -> Path:
    if args.model is not None:
        return Path(args.model).resolve()
    from conveyor_examples import resnet

    cache = Path(os.environ.get("CONVEYOR_BENCH_CACHE", Path(tempfile.gettempdir()) / "conveyor-bench"))
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"resnet{args.depth}_{args.image_size}.onnx"
    if not path.exists():
        _progress(f"building ResNet-{args.depth} at {args.image_size}px into {path} (first run only)")
        resnet.build(path, depth=args.depth, image_size=args.image_size)
    return path


def _scrape(metrics_port: int) -> tuple[float, float]:
    """(sum, count) of the step's realized batch size histogram."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("conveyor_step_batch_size_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith("conveyor_step_batch_size_count"):
            count = float(line.rsplit(" ", 1)[1])
    return total, count


def _input_feed(path: Path, rows: int) -> dict[str, Any]:
    import onnxruntime as ort

    from conveyor_runtime.protocol import DATATYPES
    from conveyor_runtime.step import ORT_DATATYPES

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {}
    for spec in session.get_inputs():
        dims = [rows] + [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape[1:]]
        feed[spec.name] = rng.random(dims).astype(DATATYPES[ORT_DATATYPES[spec.type]])
    return feed


@dataclass
class _Load:
    items: int
    latencies_ms: list[float]
    errors: int
    seconds: float
    server_cpu_s: float
    client_cpu_s: float


async def _load(port: int, feed: dict[str, Any], concurrency: int, warmup: float, duration: float, server_pid: int) -> _Load:
    import grpc.aio

    from conveyor_runtime.protocol import InferenceStub, encode_tensors, pb

    request = pb.ModelInferRequest(model_name="bench")
    encode_tensors(request, feed.items())
    rows = next(iter(feed.values())).shape[0]
    latencies: list[float] = []
    counts = {"items": 0, "errors": 0}
    measuring = False
    stop_at = time.monotonic() + warmup + duration
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(min(concurrency, 4))]
    stubs = [InferenceStub(c) for c in channels]

    async def client(index: int) -> None:
        stub = stubs[index % len(stubs)]
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                await stub.ModelInfer(request, timeout=60)
            except grpc.aio.AioRpcError:
                if measuring:
                    counts["errors"] += 1
                continue
            if measuring:
                latencies.append((time.perf_counter() - started) * 1000)
                counts["items"] += rows

    tasks = [asyncio.ensure_future(client(i)) for i in range(concurrency)]
    await asyncio.sleep(warmup)
    measuring = True
    began = time.monotonic()
    server_cpu, client_cpu = cpu_seconds(server_pid), time.process_time()
    last, last_at = 0, began
    while time.monotonic() < stop_at:
        await asyncio.sleep(min(2.0, max(0.0, stop_at - time.monotonic())))
        done, now = counts["items"], time.monotonic()
        rate = (done - last) / max(1e-9, now - last_at)
        _progress(f"{now - began:5.1f}s  {done} items  ({rate:.1f} items/s now)")
        last, last_at = done, now
    await asyncio.gather(*tasks)
    seconds = time.monotonic() - began
    server_cpu, client_cpu = cpu_seconds(server_pid) - server_cpu, time.process_time() - client_cpu
    for channel in channels:
        await channel.close()
    return _Load(counts["items"], latencies, counts["errors"], seconds, server_cpu, client_cpu)


@dataclass(frozen=True)
class InProcessRun:
    """ONNX Runtime in this process: `instances` sessions on a thread each, `intra` threads each, spinning on/off."""

    instances: int
    intra: int
    spinning: bool
    items_per_s: float = 0.0
    cpu_per_item_s: float = 0.0

    def describe(self) -> str:
        return (
            f"{self.instances} session(s) x {self.intra} intra-op thread(s), one caller thread each, "
            f"spinning {'on (ORT default)' if self.spinning else 'off (as in steps)'}"
        )


#: The in-process baseline's providers per --device (CUDA's sessions as a step asks for them, CPU behind).
_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def _in_process(path: Path, rows: int, layout: InProcessRun, seconds: float, device: str = "cpu") -> InProcessRun:
    """Items/s and CPU seconds per item of ONNX Runtime in this process at batch `rows`, laid out as `layout`, on
    `device`'s provider (`SystemExit` when this ONNX Runtime has none for it: the comparison would be void)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = layout.intra
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    flag = "1" if layout.spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", flag)
    options.add_session_config_entry("session.inter_op.allow_spinning", flag)
    available = ort.get_available_providers()
    if _PROVIDERS[device][0] not in available:
        raise SystemExit(f"--device {device}: this ONNX Runtime has {available}; install onnxruntime-gpu")
    sessions = [
        ort.InferenceSession(str(path), sess_options=options, providers=_PROVIDERS[device]) for _ in range(layout.instances)
    ]
    feed = _input_feed(path, rows)
    for session in sessions:
        for _ in range(3):
            session.run(None, feed)
    counts = [0] * len(sessions)
    began, cpu = time.perf_counter(), time.process_time()
    stop = began + seconds

    def loop(index: int) -> None:
        while time.perf_counter() < stop:
            sessions[index].run(None, feed)
            counts[index] += rows

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(sessions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    items = max(1, sum(counts))
    return InProcessRun(
        layout.instances,
        layout.intra,
        layout.spinning,
        items / (time.perf_counter() - began),
        (time.process_time() - cpu) / items,
    )


def step_layout(args: argparse.Namespace) -> tuple[int, int]:
    """(sessions, intra-op threads each) as the step sizes them (`plan_threads` on this process's CPU budget)."""
    from conveyor_runtime.step import step_cpu_budget

    intra = args.intra_threads or max(1, step_cpu_budget(None).cpus // args.instances)
    return args.instances, intra


def _spec(args: argparse.Namespace, path: Path) -> Any:
    from conveyor_runtime.spec import StepSpec

    return StepSpec.model_validate(
        {
            "name": "bench",
            "model": {
                "path": str(path),
                "instances": args.instances,
                "intraOpThreads": args.intra_threads,
                "device": args.device,
            },
            "resources": {"gpu": 1 if args.device != "cpu" else 0},
            "batching": {
                "maxBatchSize": args.max_batch,
                "maxQueueDelayMicroseconds": args.delay_us,
                "policy": args.policy,
                "maxQueueSize": max(1024, args.concurrency * args.client_batch * 2),
            },
        }
    )


async def _with_in_process_server(args: argparse.Namespace, path: Path, feed: dict[str, Any]) -> tuple[_Load, float]:
    from conveyor_runtime.step import create_step_server

    server = create_step_server(_spec(args, path), metrics_port=0)
    await server.start()
    try:
        assert server.metrics_port is not None
        # off the event loop: the step's metrics endpoint answers on this very loop
        before = await asyncio.to_thread(_scrape, server.metrics_port)
        load = await _load(server.port, feed, args.concurrency, args.warmup, args.duration, os.getpid())
        after = await asyncio.to_thread(_scrape, server.metrics_port)
    finally:
        await server.stop(grace=5)
    load.client_cpu_s = 0.0  # one process: all CPU is counted as the server's
    return load, (after[0] - before[0]) / max(1.0, after[1] - before[1])


def _with_subprocess_server(args: argparse.Namespace, path: Path, feed: dict[str, Any]) -> tuple[_Load, float]:
    from conveyor_runtime.spec import step_to_env

    port, metrics_port = free_port(), free_port()
    env = {**os.environ, **step_to_env(_spec(args, path))}
    command = [sys.executable, "-m", "conveyor_runtime.cli", "--log-level", "WARNING", "step", "--host", "127.0.0.1",
               "--port", str(port), "--metrics-port", str(metrics_port), "--grace", "5"]
    process = subprocess.Popen(command, env=env)
    try:
        _wait_ready(port, process)
        before = _scrape(metrics_port)
        load = asyncio.run(_load(port, feed, args.concurrency, args.warmup, args.duration, process.pid))
        after = _scrape(metrics_port)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return load, (after[0] - before[0]) / max(1.0, after[1] - before[1])


def _wait_ready(port: int, process: subprocess.Popen[bytes], limit_s: float = 120) -> None:
    import grpc

    from conveyor_runtime.protocol.health import HealthStub
    from conveyor_runtime.protocol.proto import health_pb2

    give_up = time.monotonic() + limit_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = HealthStub(channel)
        while time.monotonic() < give_up:
            if process.poll() is not None:
                raise RuntimeError(f"the step process exited with {process.returncode} before SERVING")
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"the step did not report SERVING within {limit_s:.0f}s")


def run(args: argparse.Namespace) -> int:
    path = _model_path(args)
    feed = _input_feed(path, args.client_batch)
    where = "in this process" if args.in_process_server else "as a subprocess"
    _progress(
        f"step {where}: {path.name}, maxBatchSize {args.max_batch}, delay {args.delay_us}us, policy {args.policy}, "
        f"{args.concurrency} clients x {args.client_batch} rows, {args.warmup:.0f}s warm-up + {args.duration:.0f}s"
    )
    if args.in_process_server:
        load, mean = asyncio.run(_with_in_process_server(args, path, feed))
    else:
        load, mean = _with_subprocess_server(args, path, feed)
    batch = max(1, round(mean))
    instances, intra = step_layout(args)
    runs = []
    for spinning in (False, True):
        layout = InProcessRun(instances, intra, spinning)
        _progress(f"in-process ONNX Runtime at batch {batch} for {max(5.0, args.duration / 2):.0f}s: {layout.describe()}")
        runs.append(_in_process(path, batch, layout, max(5.0, args.duration / 2), args.device))
    top = max(runs, key=lambda r: r.items_per_s)
    result = StepBenchResult(
        load.items, load.seconds, load.latencies_ms, load.errors, mean, batch, top.items_per_s,
        in_process_how=top.describe(),
        server_cpu_ms=1000 * load.server_cpu_s / max(1, load.items),
        client_cpu_ms=1000 * load.client_cpu_s / max(1, load.items),
        in_process_cpu_ms=1000 * top.cpu_per_item_s,
    )
    _print(result, args, path, runs)
    return 0


def _print(result: StepBenchResult, args: argparse.Namespace, path: Path, runs: list[InProcessRun]) -> None:
    rows = [
        ("model", f"{path.name} (maxBatchSize {args.max_batch}, {args.instances} instance(s), device {args.device})"),
        ("clients", f"{args.concurrency} closed-loop x {args.client_batch} row(s)"),
        ("step throughput", f"{result.items_per_s:.1f} items/s"),
        ("latency p50 / p99", f"{result.percentile(50):.1f} / {result.percentile(99):.1f} ms"),
        ("realized batch size", f"{result.mean_batch:.2f} rows"),
        ("errors", str(result.errors)),
        *[
            (f"in-process ORT (batch {result.in_process_batch}), spinning {'on' if r.spinning else 'off'}",
             f"{r.items_per_s:.1f} items/s")
            for r in runs
        ],
        ("in-process baseline (the faster)", result.in_process_how),
        ("step / in-process", f"{result.ratio * 100:.1f}%"),
        ("CPU per item: step server", f"{result.server_cpu_ms:.2f} ms (+ {result.client_cpu_ms:.2f} ms load generator)"),
        ("CPU per item: in-process", f"{result.in_process_cpu_ms:.2f} ms"),
        ("CPU efficiency (in-process / step)", f"{result.in_process_cpu_ms / result.server_cpu_ms * 100:.1f}%"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
