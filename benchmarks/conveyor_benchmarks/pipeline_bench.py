"""`conveyor bench pipeline`: drive a running pipeline with closed- and open-loop load; report throughput,
p50/p95/p99, each step's realized batch size, queue and compute time (from its Prometheus metrics) and the
bottleneck, next to the same steps run in this process at the model's best batch size.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from conveyor_runtime.protocol import encode_tensors, pb
from conveyor_runtime.spec import ExecutionPlan, PipelineManifest, StepSpec, load_manifest, route_inputs

from .load import LoadResult, closed_loop, open_loop
from .local_pipeline import LocalPipeline

__all__ = ["StepStats", "in_process_baseline", "make_payloads", "register", "run", "scrape", "step_stats"]

_PREPROCESS_OPS = {"image-preprocess", "preprocess", "conveyor_runtime.ops.vision:Preprocess"}


def register(modes: Any) -> None:
    parser: argparse.ArgumentParser = modes.add_parser(
        "pipeline", help="load a pipeline (closed and open loop), per-step batching and the bottleneck, vs in-process"
    )
    parser.add_argument("manifest", help="the pipeline manifest (started with `conveyor run` unless --addresses is given)")
    parser.add_argument("--addresses", help="attach to a running `conveyor run --addresses-json FILE` instead of starting one")
    parser.add_argument("--replicas", action="append", default=[], metavar="STEP=N", help="passed to `conveyor run`")
    parser.add_argument("--concurrency", default="1,4,16", help="closed-loop client counts, comma-separated (default 1,4,16)")
    parser.add_argument(
        "--rates", default="auto", help="open-loop requests/s, comma-separated; auto = 50%%,90%% of the best closed loop"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per load level (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level (default 2)")
    add_payload_arguments(parser)
    parser.add_argument("--no-baseline", action="store_true", help="skip the in-process baseline")
    parser.add_argument("--json", dest="json_out", help="also write every figure to this JSON file")
    parser.set_defaults(handler=run)


def add_payload_arguments(parser: argparse.ArgumentParser) -> None:
    """--rows, --payload and --frame: what each request carries (read by `make_payloads`)."""
    parser.add_argument("--rows", type=int, default=1, help="rows (images) per request (default 1)")
    parser.add_argument(
        "--payload", default="auto", choices=["auto", "jpeg", "png", "pixels"], help="what requests carry (default auto)"
    )
    parser.add_argument("--frame", default="320x240", help="camera frame WxH for jpeg/png payloads (default 320x240)")


# --- payloads ------------------------------------------------------------------------------------------------


def make_payloads(
    manifest: PipelineManifest, kind: str, rows: int, frame: tuple[int, int], count: int = 16, seed: int = 0
) -> list[npt.NDArray[Any]]:
    """`count` distinct request tensors for the pipeline's entry step (rows first)."""
    plan = ExecutionPlan.from_manifest(manifest)
    entry = plan.nodes[plan.entry].spec
    size = int(entry.config.get("size", 224))
    rng = np.random.default_rng(seed)
    if kind == "auto":
        kind = ("pixels" if size <= 32 else "jpeg") if entry.op in _PREPROCESS_OPS else "random"
    if kind == "random":
        raise SystemExit(f"cannot guess a payload for entry step {entry.name!r}; pass --payload jpeg|png|pixels")
    payloads = []
    for _ in range(count):
        if kind == "pixels":
            channels = () if entry.config.get("grayscale") else (3,)
            payloads.append(rng.integers(0, 256, (rows, size, size, *channels), dtype=np.uint8))
            continue
        from PIL import Image

        images = np.empty(rows, dtype=object)
        for row in range(rows):
            pixels = rng.integers(0, 256, (frame[1], frame[0], 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG" if kind == "jpeg" else "PNG", quality=90)
            images[row] = buffer.getvalue()
        payloads.append(images)
    return payloads


# --- metrics -------------------------------------------------------------------------------------------------


def scrape(address: str, timeout: float = 5.0) -> dict[str, float]:
    """A metrics endpoint's samples as {"name{labels}": value} (only the conveyor_step_* series)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("conveyor_step_"):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "step")
                samples[f"{sample.name}{{{labels}}}"] = float(sample.value)
    return samples


@dataclass
class StepStats:
    """One step over a load window, summed over its replicas."""

    step: str
    replicas: int
    requests: float
    batches: float
    mean_batch: float
    queue_ms: float
    compute_ms: float
    request_ms: float
    busy: float  # compute (or, for steps without batches, request) seconds per replica-second of the window


def _delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def step_stats(step: str, before: list[dict[str, float]], after: list[dict[str, float]], seconds: float) -> StepStats:
    """Per-step figures from metric snapshots taken before and after a window (one dict per replica)."""
    total: dict[str, float] = {}
    for b, a in zip(before, after):
        for key in set(a) | set(b):
            total[key] = total.get(key, 0.0) + _delta(b, a, key)
    batches = total.get("conveyor_step_batch_size_count{}", 0.0)
    rows = total.get("conveyor_step_batch_size_sum{}", 0.0)
    queued = total.get("conveyor_step_queue_seconds_count{}", 0.0)
    compute_s = total.get("conveyor_step_compute_seconds_sum{}", 0.0)
    compute_n = total.get("conveyor_step_compute_seconds_count{}", 0.0)
    requests = sum(v for k, v in total.items() if k.startswith("conveyor_step_requests_total{"))
    request_s = total.get("conveyor_step_request_seconds_sum{}", 0.0)
    request_n = total.get("conveyor_step_request_seconds_count{}", 0.0)
    busy_s = compute_s if compute_n else request_s  # steps that never batch (per-request ops) do their work per request
    return StepStats(
        step=step,
        replicas=len(after),
        requests=requests,
        batches=batches,
        mean_batch=rows / batches if batches else math.nan,
        queue_ms=1000.0 * total.get("conveyor_step_queue_seconds_sum{}", 0.0) / queued if queued else math.nan,
        compute_ms=1000.0 * compute_s / compute_n if compute_n else math.nan,
        request_ms=1000.0 * request_s / request_n if request_n else math.nan,
        busy=busy_s / (seconds * max(len(after), 1)) if seconds > 0 else math.nan,
    )


#: Below this share of time computing, a step is not what limits the pipeline.
SATURATED_BUSY = 0.6


def bottleneck(stats: list[StepStats]) -> StepStats | None:
    """The step whose replicas are busiest computing (ties: the longer queue)."""
    known = [s for s in stats if not math.isnan(s.busy)]
    return max(known, key=lambda s: (round(s.busy, 2), 0.0 if math.isnan(s.queue_ms) else s.queue_ms), default=None)


# --- in-process baseline -------------------------------------------------------------------------------------


def _in_process_spec(step: StepSpec) -> StepSpec:
    if step.model is None:
        return step
    model = step.model.model_copy(update={"instances": 1, "intraOpThreads": 0, "interOpThreads": 0})
    return step.model_copy(update={"model": model})


def in_process_baseline(
    manifest_path: Path, payloads: list[npt.NDArray[Any]], batch_sizes: list[int], seconds: float = 5.0
) -> dict[int, float]:
    """Rows/s of all steps run one after another in this process, per batch size.

    Same ops and models, but each model as ONE session with ONNX Runtime's default threads (all cores): the
    best a single process does, whatever `instances` the pipeline uses to spread its work.
    """
    from conveyor_runtime.ops import RequestContext, Skip
    from conveyor_runtime.step import load_step_op

    manifest = load_manifest(manifest_path)
    plan = ExecutionPlan.from_manifest(manifest)
    ops = {name: load_step_op(_in_process_spec(plan.nodes[name].spec), manifest_path.parent) for name in plan.order}
    expected = {name: [t.name for t in op.inputs] or None for name, op in ops.items()}
    pool = np.concatenate(payloads)

    def run_batch(batch: npt.NDArray[Any]) -> None:
        produced: dict[str, dict[str, Any]] = {}
        for name in plan.order:
            node = plan.nodes[name]
            if not node.inputs:
                inputs = {(expected[name] or ["image"])[0]: batch}
            else:
                inputs = route_inputs(name, [(u, produced[u]) for u in node.inputs], expected[name])
            context = RequestContext(id="baseline")
            prepared = ops[name].preprocess(inputs, context)
            outputs = prepared.outputs if isinstance(prepared, Skip) else ops[name].process(prepared)
            produced[name] = ops[name].postprocess(outputs, context)

    results: dict[int, float] = {}
    for size in batch_sizes:
        batches = [pool[(i * size) % len(pool) :][:size] for i in range(8)]
        batches = [b if len(b) == size else np.concatenate([b, pool[: size - len(b)]]) for b in batches]
        run_batch(batches[0])  # warm up this size
        rows, start, i = 0, time.monotonic(), 0
        while time.monotonic() - start < seconds or i < 3:
            run_batch(batches[i % len(batches)])
            rows += size
            i += 1
        results[size] = rows / (time.monotonic() - start)
    for op in ops.values():
        op.close()
    return results


# --- the command -----------------------------------------------------------------------------------------------


def _fmt(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


async def _measure(
    addresses: dict[str, Any],
    plan: ExecutionPlan,
    levels: list[tuple[str, float]],
    payloads: list[npt.NDArray[Any]],
    args: argparse.Namespace,
) -> list[tuple[LoadResult, list[StepStats]]]:
    requests = []
    for payload in payloads:
        request = pb.ModelInferRequest(model_name=plan.pipeline)
        encode_tensors(request, [("image", payload)])
        requests.append(request)

    def make_request(n: int) -> pb.ModelInferRequest:
        return requests[n % len(requests)]

    metrics = {name: [r["metrics"] for r in addresses["steps"][name]] for name in plan.order}
    results = []
    for mode, value in levels:
        print(f"  {mode} loop {'C=' + str(int(value)) if mode == 'closed' else f'{value:.1f} req/s'} ...", flush=True)
        before = {name: [await asyncio.to_thread(scrape, a) for a in m] for name, m in metrics.items()}
        started = time.monotonic()
        if mode == "closed":
            result = await closed_loop(
                addresses["grpc"], make_request, concurrency=int(value), duration_s=args.duration,
                warmup_s=args.warmup, rows_per_request=args.rows,
            )
        else:
            result = await open_loop(
                addresses["grpc"], make_request, rate=value, duration_s=args.duration,
                warmup_s=args.warmup, rows_per_request=args.rows,
            )
        elapsed = time.monotonic() - started
        after = {name: [await asyncio.to_thread(scrape, a) for a in m] for name, m in metrics.items()}
        # metrics cover warm-up and window alike, so per-step figures use the whole elapsed time
        stats = [step_stats(name, before[name], after[name], elapsed) for name in plan.order]
        results.append((result, stats))
    return results


def run(args: argparse.Namespace) -> int:
    manifest_path = Path(args.manifest).resolve()
    manifest = load_manifest(manifest_path)
    plan = ExecutionPlan.from_manifest(manifest)
    width, _, height = args.frame.partition("x")
    payloads = make_payloads(manifest, args.payload, args.rows, (int(width), int(height)))
    concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    pipeline = None
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as workdir:
        if args.addresses:
            addresses = json.loads(Path(args.addresses).read_text())
        else:
            pipeline = LocalPipeline.start(manifest_path, Path(workdir), replicas=args.replicas, http=False)
            addresses = pipeline.addresses()
        try:
            print(f"load on {addresses['grpc']} ({args.rows} row(s)/request, {args.duration:g}s per level):", flush=True)
            measured = asyncio.run(_measure(addresses, plan, [("closed", c) for c in concurrency], payloads, args))
            best = max((r.requests_per_s for r, _ in measured), default=0.0)
            rates = (
                [round(best * 0.5, 1), round(best * 0.9, 1)]
                if args.rates == "auto"
                else [float(r) for r in args.rates.split(",") if r.strip()]
            )
            rates = [r for r in rates if r > 0]
            measured += asyncio.run(_measure(addresses, plan, [("open", r) for r in rates], payloads, args))
        finally:
            if pipeline is not None:
                pipeline.stop()
    baseline: dict[int, float] = {}
    if not args.no_baseline:
        model_steps = [plan.nodes[n].spec for n in plan.order if plan.nodes[n].spec.model is not None]
        top = max([s.batching.maxBatchSize for s in model_steps] + [1])
        sizes = sorted({1, *[b for b in (2, 4, 8, 16, 32) if b <= top], top})
        print(f"in-process baseline (same steps in this process, batch sizes {sizes}) ...", flush=True)
        baseline = in_process_baseline(manifest_path, payloads, sizes, seconds=max(3.0, args.duration / 2))
    _report(plan, measured, baseline, args)
    return 0


def _report(
    plan: ExecutionPlan,
    measured: list[tuple[LoadResult, list[StepStats]]],
    baseline: dict[int, float],
    args: argparse.Namespace,
) -> None:
    rows = [["load", "req/s", "rows/s", "p50 ms", "p95 ms", "p99 ms", "errors"]]
    for result, _ in measured:
        rows.append(
            [
                f"{result.mode} {result.level}",
                _fmt(result.requests_per_s),
                _fmt(result.rows_per_s),
                _fmt(result.ms(50)),
                _fmt(result.ms(95)),
                _fmt(result.ms(99)),
                str(result.error_count) + (f" {result.errors}" if result.errors else ""),
            ]
        )
    print()
    print(f"pipeline {plan.pipeline}: {' -> '.join(plan.order)}")
    print(_table(rows))
    for result, stats in measured:
        print()
        print(f"per step at {result.mode} {result.level}:")
        step_rows = [["step", "replicas", "batch", "queue ms", "compute ms/batch", "request ms", "busy %"]]
        for s in stats:
            step_rows.append(
                [
                    s.step,
                    str(s.replicas),
                    _fmt(s.mean_batch, 2),
                    _fmt(s.queue_ms, 2),
                    _fmt(s.compute_ms, 2),
                    _fmt(s.request_ms, 2),
                    _fmt(100 * s.busy, 0),
                ]
            )
        print(_table(step_rows))
        neck = bottleneck(stats)
        if neck is not None and neck.busy < SATURATED_BUSY:
            print(
                f"bottleneck: the gateway or the load generator (no step is saturated; busiest: {neck.step}, "
                f"{100 * neck.busy:.0f}% per replica)"
            )
        elif neck is not None:
            print(f"bottleneck: {neck.step} (busy {100 * neck.busy:.0f}% per replica, queue {_fmt(neck.queue_ms, 2)} ms)")
    saturation = max((r.rows_per_s for r, _ in measured if r.mode == "closed"), default=0.0)
    summary: dict[str, Any] = {"pipeline": plan.pipeline, "saturation_rows_per_s": saturation}
    if baseline:
        best_size = max(baseline, key=lambda b: baseline[b])
        ratio = saturation / baseline[best_size] if baseline[best_size] else math.nan
        print()
        print("in-process baseline: " + ", ".join(f"batch {b}: {v:.1f} rows/s" for b, v in baseline.items()))
        print(
            f"pipeline at saturation: {saturation:.1f} rows/s = {100 * ratio:.0f}% of in-process "
            f"{baseline[best_size]:.1f} rows/s (best batch {best_size})"
        )
        summary.update(baseline={str(k): v for k, v in baseline.items()}, best_batch=best_size, ratio=ratio)
    if args.json_out:
        summary["levels"] = [
            {
                "mode": r.mode,
                "level": r.level,
                "requests_per_s": r.requests_per_s,
                "rows_per_s": r.rows_per_s,
                "p50_ms": r.ms(50),
                "p95_ms": r.ms(95),
                "p99_ms": r.ms(99),
                "errors": r.errors,
                "steps": [vars(s) for s in stats],
            }
            for r, stats in measured
        ]
        Path(args.json_out).write_text(json.dumps(summary, indent=2, default=str))
