"""`conveyor bench pipeline`: drive a running pipeline with closed- and open-loop load; report throughput,
p50/p95/p99, each step's realized batch size, queue and compute time (from its Prometheus metrics) and the
bottleneck, next to the same steps run in this process in their best layout and batch size (`in_process`).
With ``--policies`` (batching policies), ``--data-paths`` (step-to-step forwarding or every tensor through the
gateway), ``--placements`` (op steps in processes of their own or in a model step's), ``--threading`` (model
sessions sized for a lone batch when idle, or not), ``--event-loops`` (the serving processes on uvloop or asyncio's
own loop), ``--step-calls`` (small step calls as messages on call streams, or a unary gRPC call each) or
``--gateways`` (`conveyor run --gateway separate` or ``embedded``) the same levels run once per variant, each on a
fresh pipeline, in one command. ``--floor`` adds what serving the busiest level costs a server that computes nothing
(`protocol_floor`).
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc.aio
import numpy as np
import numpy.typing as npt
import yaml

from conveyor_runtime.protocol import encode_tensors, pb
from conveyor_runtime.routing import STEP_CALLS_ENV
from conveyor_runtime.serving.event_loop import EVENT_LOOP_ENV
from conveyor_runtime.spec import POD_LEVEL_FIELDS, ExecutionPlan, PipelineManifest, load_manifest
from conveyor_runtime.step import step_cpu_budget

from .cpu import cpu_seconds
from .in_process import LAYOUTS, BaselinePoint, best, in_process_baseline, layouts_for, remeasure
from .load import LoadResult, closed_loop, open_loop, open_stubs
from .local_pipeline import LocalPipeline, process_pids
from .protocol_floor import Floor, measure_floor

__all__ = ["StepStats", "make_payloads", "register", "run", "scrape", "step_stats", "variant_manifest", "variant_run_args"]

POLICIES = ("workConserving", "fill")
DATA_PATHS = ("stepToStep", "gateway")
#: processPerStep: every step in processes of its own; inProcess: each op step (no model) runs in the process of a
#: neighbouring model step (`inProcessWith`; its consumer when that is a model step, else its input), with the gateway
#: in a process of its own; inProcessEmbedded: the same with the gateway in the entry step's process (`conveyor run
#: --gateway separate / embedded`). processPerStep leaves the gateway to `conveyor run` (default auto).
PLACEMENTS = ("processPerStep", "inProcess", "inProcessEmbedded")
#: adaptive: model steps' ``adaptiveThreads`` on (a lone batch runs on all the step's CPUs); fixed: off.
THREADINGS = ("adaptive", "fixed")
#: The serving processes' event loop ($CONVEYOR_EVENT_LOOP, see conveyor_runtime.serving.event_loop).
EVENT_LOOPS = ("uvloop", "asyncio")
#: How the gateway and forwarding steps call steps ($CONVEYOR_STEP_CALLS, see conveyor_runtime.protocol.call_stream).
STEP_CALLS = ("stream", "unary")
#: Where `conveyor run` serves the gateway (`conveyor run --gateway`): in a process of its own, or in the entry step's.
GATEWAYS = ("separate", "embedded")

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
    parser.add_argument(
        "--policies",
        default="",
        help="batching policies to compare (comma-separated: workConserving,fill), each on a fresh pipeline whose "
        "model steps get that batching.policy (default: the manifest as it is)",
    )
    parser.add_argument(
        "--data-paths",
        default="",
        help="data paths to compare (comma-separated: stepToStep,gateway), each on a fresh pipeline with that "
        "spec.gateway.dataPath (combine with --policies to compare both)",
    )
    parser.add_argument(
        "--placements",
        default="",
        help="step placements to compare (comma-separated: processPerStep,inProcess,inProcessEmbedded), each on a fresh "
        "pipeline: every step in processes of its own, each op step inProcessWith a neighbouring model step, or that "
        "with the gateway in the entry step's process too (conveyor run --gateway embedded; inProcess: --gateway separate)",
    )
    parser.add_argument(
        "--threading",
        default="",
        help="model threading to compare (comma-separated: adaptive,fixed), each on a fresh pipeline whose model steps "
        "get that model.adaptiveThreads (adaptive: a lone batch runs on all the step's CPUs)",
    )
    parser.add_argument(
        "--event-loops",
        default="",
        help="serving event loops to compare (comma-separated: uvloop,asyncio), each on a fresh pipeline whose "
        f"processes run with {EVENT_LOOP_ENV} set to it",
    )
    parser.add_argument(
        "--step-calls",
        default="",
        help="step-call transports to compare (comma-separated: stream,unary), each on a fresh pipeline whose "
        f"processes run with {STEP_CALLS_ENV} set to it",
    )
    parser.add_argument(
        "--gateways",
        default="",
        help="gateway placements to compare (comma-separated: separate,embedded), each on a fresh pipeline started "
        "with conveyor run --gateway set to it (embedded needs an entry step with 1 replica)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the in-process baseline")
    parser.add_argument(
        "--baseline-layouts",
        default=",".join(LAYOUTS),
        help=f"in-process layouts to try, comma-separated (default {','.join(LAYOUTS)}); the best one is the baseline",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also load a server that computes nothing (conveyor_benchmarks.null_server) with the busiest closed-loop "
        "level's clients and rate: the CPU per request that serving over gRPC costs at the least, server and load "
        "generator apart",
    )
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


def scrape(address: str, timeout: float = 5.0, step: str | None = None) -> dict[str, float]:
    """A metrics endpoint's samples as {"name{labels}": value} (only the conveyor_step_* series; with `step`, only
    that step's: a process also serves the steps that run in it, `inProcessWith`)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("conveyor_step_") and (step is None or sample.labels.get("step", step) == step):
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
    busy: float  # model instance- (or, for steps without batches, request) seconds per replica-second of the window
    alone: float = math.nan  # share of the batches computed alone on all the step's threads (model.adaptiveThreads)


BUSY, COMPUTE = "conveyor_step_busy_seconds_total{}", "conveyor_step_compute_seconds_sum{}"


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
    # instance-seconds (a batch computed alone holds every instance; a replica without the counter: its compute
    # time); steps that never batch do their work per request
    busy_s = sum(_delta(b, a, BUSY if BUSY in a else COMPUTE) for b, a in zip(before, after)) if compute_n else request_s
    alone = total.get("conveyor_step_alone_batches_total{}", 0.0)
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
        alone=alone / batches if batches else math.nan,
    )


#: Below this share of time computing, a step is not what limits the pipeline.
SATURATED_BUSY = 0.6


def bottleneck(stats: list[StepStats]) -> StepStats | None:
    """The step whose replicas are busiest computing (ties: the longer queue)."""
    known = [s for s in stats if not math.isnan(s.busy)]
    return max(known, key=lambda s: (round(s.busy, 2), 0.0 if math.isnan(s.queue_ms) else s.queue_ms), default=None)


# --- the command -----------------------------------------------------------------------------------------------


def _fmt(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


@dataclass
class Level:
    """One load level on one pipeline: the load's outcome, per-step figures, and the serving processes' CPU."""

    result: LoadResult
    stats: list[StepStats]
    cpu_s: float  # gateway (the `conveyor run` process) + every replica, over warm-up and window
    elapsed_s: float

    @property
    def cpu_ms_per_row(self) -> float:
        rows = self.result.rows_per_s * self.elapsed_s
        return 1000.0 * self.cpu_s / rows if rows and self.cpu_s else math.nan


def _request_maker(plan: ExecutionPlan, payloads: list[npt.NDArray[Any]]) -> Callable[[int], pb.ModelInferRequest]:
    """Request `n` of a level: the payloads' requests in turn."""
    requests = []
    for payload in payloads:
        request = pb.ModelInferRequest(model_name=plan.pipeline)
        encode_tensors(request, [("image", payload)])
        requests.append(request)

    def make_request(n: int) -> pb.ModelInferRequest:
        return requests[n % len(requests)]

    return make_request


async def _answer(address: str, request: pb.ModelInferRequest) -> pb.ModelInferResponse | None:
    """The pipeline's answer to `request`: what the null server of `--floor` returns (None, said, if it fails)."""
    async with open_stubs(address, channels=1) as stubs:
        try:
            response: pb.ModelInferResponse = await stubs[0].ModelInfer(request, timeout=60.0)
        except grpc.aio.AioRpcError as exc:
            print(f"protocol floor: skipped, the pipeline did not answer ({exc.code().name}: {exc.details()})", flush=True)
            return None
        return response


async def _measure(
    addresses: dict[str, Any],
    pids: list[int],
    plan: ExecutionPlan,
    level: tuple[str, float],
    payloads: list[npt.NDArray[Any]],
    args: argparse.Namespace,
) -> Level:
    make_request = _request_maker(plan, payloads)

    metrics = {name: [r["metrics"] for r in addresses["steps"][name]] for name in plan.order}
    mode, value = level
    before = {name: [await asyncio.to_thread(scrape, a, step=name) for a in m] for name, m in metrics.items()}
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
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
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    after = {name: [await asyncio.to_thread(scrape, a, step=name) for a in m] for name, m in metrics.items()}
    # metrics cover warm-up and window alike, so per-step figures use the whole elapsed time
    stats = [step_stats(name, before[name], after[name], elapsed) for name in plan.order]
    return Level(result, stats, cpu, elapsed)


def _chosen(flag: str, text: str, allowed: tuple[str, ...]) -> list[str]:
    """The comma-separated variants of one flag, each checked against `allowed`."""
    chosen = [v.strip() for v in text.split(",") if v.strip()]
    for variant in chosen:
        if variant not in allowed:
            raise SystemExit(f"{flag}: each must be one of {', '.join(allowed)}, got {variant!r}")
    return chosen


def variant_manifest(manifest_path: Path, variant: str) -> Path:
    """A copy of the manifest next to it (relative paths still resolve) with the `variant`: a batching policy for its
    model steps (see `POLICIES`), or a `spec.gateway.dataPath` (see `DATA_PATHS`)."""
    data = yaml.safe_load(manifest_path.read_text())
    if variant in DATA_PATHS:
        data["spec"]["gateway"] = {**(data["spec"].get("gateway") or {}), "dataPath": variant}
    elif variant in PLACEMENTS:
        _place(data["spec"]["steps"], in_process=variant != "processPerStep")
    elif variant in THREADINGS:
        for step in data["spec"]["steps"]:
            if "model" in step:
                step["model"]["adaptiveThreads"] = variant == "adaptive"
    elif _variant_env(variant) is not None or variant in GATEWAYS:
        pass  # the manifest as it is: the variant is the processes' environment, or a flag of `conveyor run`
    else:
        for step in data["spec"]["steps"]:
            if "model" in step:
                step["batching"] = {**(step.get("batching") or {}), "policy": variant}
    path = manifest_path.with_name(f".bench-{variant}-{manifest_path.name}")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _place(steps: list[dict[str, Any]], *, in_process: bool) -> None:
    """Set each op step's `inProcessWith` (see `PLACEMENTS`) in a manifest's steps, in place; its pod-level fields go."""
    inputs = {
        step["name"]: list(step["inputs"]) if step.get("inputs") is not None else ([steps[i - 1]["name"]] if i else [])
        for i, step in enumerate(steps)
    }
    models = {step["name"] for step in steps if "model" in step}
    for step in steps:
        step.pop("inProcessWith", None)
        if not in_process or "model" in step:
            continue
        consumers = [name for name, upstream in inputs.items() if step["name"] in upstream and name in models]
        producers = [name for name in inputs[step["name"]] if name in models]
        host = (consumers or producers or [None])[0]
        if host is not None:
            step["inProcessWith"] = host
            for field in POD_LEVEL_FIELDS:
                step.pop(field, None)


def _describe(variant: str) -> str:
    if variant in DATA_PATHS:
        return f"data path {variant}"
    if variant in PLACEMENTS:
        return f"placement {variant}"
    if variant in THREADINGS:
        return f"{variant} threads"
    if variant in EVENT_LOOPS:
        return f"{variant} event loop"
    if variant in STEP_CALLS:
        return f"{variant} step calls"
    if variant in GATEWAYS:
        return f"{variant} gateway"
    return f"batching policy {variant}"


def variant_run_args(variant: str) -> list[str]:
    """The `conveyor run` flags a variant adds."""
    if variant in GATEWAYS:
        return ["--gateway", variant]
    return {"inProcess": ["--gateway", "separate"], "inProcessEmbedded": ["--gateway", "embedded"]}.get(variant, [])


def _variant_env(variant: str) -> dict[str, str] | None:
    """The environment a variant sets on the pipeline's processes (None: the variant is in the manifest)."""
    if variant in EVENT_LOOPS:
        return {EVENT_LOOP_ENV: variant}
    if variant in STEP_CALLS:
        return {STEP_CALLS_ENV: variant}
    return None


#: (policy or "" for the manifest as it is, what was measured at each level)
Measured = list[tuple[str, list[Level]]]


@dataclass
class _Target:
    """A pipeline under load: its addresses, the pids whose CPU counts, and the process when we started it."""

    policy: str
    addresses: dict[str, Any]
    pids: list[int]
    pipeline: LocalPipeline | None = None
    manifest: Path | None = None  # the policy's copy, removed at the end


def _start_targets(manifest_path: Path, policies: list[str], workdir: Path, args: argparse.Namespace) -> list[_Target]:
    targets: list[_Target] = []
    if args.addresses:
        addresses = json.loads(Path(args.addresses).read_text())
        return [_Target("", addresses, list(process_pids(addresses).values()))]
    for policy in policies or [""]:
        path = variant_manifest(manifest_path, policy) if policy else manifest_path
        target = _Target(policy, {}, [], manifest=path if policy else None)
        targets.append(target)
        if policy:
            print(f"{_describe(policy)}:", flush=True)
        target.pipeline = LocalPipeline.start(
            path,
            workdir / (policy or "manifest"),
            replicas=args.replicas,
            http=False,
            env=_variant_env(policy),
            run_args=variant_run_args(policy),
        )
        target.addresses = target.pipeline.addresses()
        target.pids = list(target.pipeline.pids().values())
    return targets


def _stop_targets(targets: list[_Target]) -> None:
    for target in targets:
        if target.pipeline is not None:
            target.pipeline.stop()
        if target.manifest is not None:
            target.manifest.unlink(missing_ok=True)


#: What the in-process reference points measured right after each closed-loop level ("C=8": [points]).
Nearby = dict[str, list[BaselinePoint]]


def _load_levels(
    manifest_path: Path,
    policies: list[str],
    plan: ExecutionPlan,
    payloads: list[npt.NDArray[Any]],
    args: argparse.Namespace,
    reference: Callable[[], list[BaselinePoint]] | None = None,
) -> tuple[Measured, Nearby, pb.ModelInferResponse | None]:
    """Every level on every policy's pipeline, the policies taking turns at each level in alternating order (so
    drift on a shared machine favours neither); after each closed-loop level, the `reference` points again. With
    --floor, also the first pipeline's answer to the first request."""
    nearby: Nearby = {}
    answer = None
    concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as workdir:
        targets: list[_Target] = []
        try:
            for policy in policies or [""]:
                (Path(workdir) / (policy or "manifest")).mkdir()
            targets = _start_targets(manifest_path, policies, Path(workdir), args)
            levels: dict[str, list[Level]] = {t.policy: [] for t in targets}
            print(f"load ({args.rows} row(s)/request, {args.duration:g}s per level):", flush=True)

            def measure(mode: str, values: dict[str, list[float]]) -> None:
                for index in range(max(len(v) for v in values.values())):
                    for target in targets if index % 2 == 0 else targets[::-1]:  # ABBA: drift favours neither
                        if index >= len(values[target.policy]):
                            continue
                        value = values[target.policy][index]
                        label = f"C={int(value)}" if mode == "closed" else f"{value:.1f} req/s"
                        print(f"  {mode} loop {label}" + (f" ({target.policy})" if target.policy else "") + " ...", flush=True)
                        level = asyncio.run(_measure(target.addresses, target.pids, plan, (mode, value), payloads, args))
                        levels[target.policy].append(level)
                    if mode == "closed" and reference is not None:
                        label = f"C={int(values[targets[0].policy][index])}"
                        print(f"  in-process reference next to {label} ...", flush=True)
                        nearby[label] = reference()

            measure("closed", {t.policy: [float(c) for c in concurrency] for t in targets})
            rates: dict[str, list[float]] = {}
            for target in targets:
                top = max((lv.result.requests_per_s for lv in levels[target.policy]), default=0.0)
                chosen = (
                    [round(top * 0.5, 1), round(top * 0.9, 1)]
                    if args.rates == "auto"
                    else [float(r) for r in args.rates.split(",") if r.strip() and r.strip() != "none"]
                )
                rates[target.policy] = [r for r in chosen if r > 0]
            if any(rates.values()):
                measure("open", rates)
            if args.floor:
                answer = asyncio.run(_answer(targets[0].addresses["grpc"], _request_maker(plan, payloads)(0)))
        finally:
            _stop_targets(targets)
    return [(t.policy, levels[t.policy]) for t in targets], nearby, answer


def run(args: argparse.Namespace) -> int:
    manifest_path = Path(args.manifest).resolve()
    manifest = load_manifest(manifest_path)
    plan = ExecutionPlan.from_manifest(manifest)
    width, _, height = args.frame.partition("x")
    payloads = make_payloads(manifest, args.payload, args.rows, (int(width), int(height)))
    policies = [  # each a variant of its own, on a pipeline of its own
        *_chosen("--policies", args.policies, POLICIES),
        *_chosen("--data-paths", args.data_paths, DATA_PATHS),
        *_chosen("--placements", args.placements, PLACEMENTS),
        *_chosen("--threading", args.threading, THREADINGS),
        *_chosen("--event-loops", args.event_loops, EVENT_LOOPS),
        *_chosen("--step-calls", args.step_calls, STEP_CALLS),
        *_chosen("--gateways", args.gateways, GATEWAYS),
    ]
    if policies and args.addresses:
        raise SystemExit(
            "--policies, --data-paths, --placements, --threading, --event-loops, --step-calls and --gateways start a "
            "pipeline per "
            "variant; they cannot attach to --addresses"
        )
    baseline: list[BaselinePoint] = []
    reference = None
    if not args.no_baseline:
        model_steps = [plan.nodes[n].spec for n in plan.order if plan.nodes[n].spec.model is not None]
        top = max([s.batching.maxBatchSize for s in model_steps] + [1])
        sizes = sorted({1, *[b for b in (2, 4, 8, 16, 32) if b <= top], top})
        cores = step_cpu_budget(None).cpus
        layouts = layouts_for(cores, [n.strip() for n in args.baseline_layouts.split(",") if n.strip()])
        print(
            f"in-process baseline (same steps in this process on {cores} CPU(s): "
            f"{', '.join(layout.name for layout in layouts)}; batch sizes {sizes}) ...",
            flush=True,
        )
        seconds = max(3.0, args.duration / 2)
        baseline = in_process_baseline(manifest_path, payloads, sizes, layouts, seconds=seconds, progress=print)
        top_point = best(baseline)
        again = [top_point, *[p for p in baseline if p.batch == 1 and p.latencies and p is not top_point][:1]]

        def reference() -> list[BaselinePoint]:
            return remeasure(manifest_path, payloads, again, seconds)

    measured, nearby, answer = _load_levels(manifest_path, policies, plan, payloads, args, reference)
    floor = _floor(plan, measured, answer, payloads, args) if answer is not None else None
    _report(plan, measured, baseline, nearby, args, floor)
    return 0


def _floor(
    plan: ExecutionPlan,
    measured: Measured,
    answer: pb.ModelInferResponse,
    payloads: list[npt.NDArray[Any]],
    args: argparse.Namespace,
) -> Floor | None:
    """The null server loaded like the first pipeline's busiest closed-loop level: same clients, about the same rate."""
    closed = [lv.result for lv in measured[0][1] if lv.result.mode == "closed"] if measured else []
    busiest = max(closed, key=lambda r: r.requests_per_s, default=None)
    if busiest is None or busiest.requests_per_s <= 0:
        print("protocol floor: skipped, no closed-loop level answered requests to match (see --concurrency)", flush=True)
        return None
    concurrency = int(busiest.level.removeprefix("C="))
    print(f"  protocol floor at {busiest.level}: a server that computes nothing ...", flush=True)
    return measure_floor(
        answer,
        _request_maker(plan, payloads),
        concurrency=concurrency,
        delay_s=concurrency / busiest.requests_per_s,
        duration_s=args.duration,
        warmup_s=args.warmup,
    )


def _report_levels(plan: ExecutionPlan, policy: str, measured: list[Level]) -> None:
    models = [n for n in plan.order if plan.nodes[n].spec.model is not None]
    head = ["load", "req/s", "rows/s", "p50 ms", "p95 ms", "p99 ms", *[f"{m} batch" for m in models], "CPU ms/row", "errors"]
    rows = [head]
    for level in measured:
        result, stats = level.result, level.stats
        batch = {s.step: s.mean_batch for s in stats}
        rows.append(
            [
                f"{result.mode} {result.level}",
                _fmt(result.requests_per_s),
                _fmt(result.rows_per_s),
                _fmt(result.ms(50)),
                _fmt(result.ms(95)),
                _fmt(result.ms(99)),
                *[_fmt(batch.get(m, math.nan), 2) for m in models],
                _fmt(level.cpu_ms_per_row, 2),
                str(result.error_count) + (f" {result.errors}" if result.errors else ""),
            ]
        )
    print()
    print(f"pipeline {plan.pipeline}: {' -> '.join(plan.order)}" + (f", {_describe(policy)}" if policy else ""))
    print(_table(rows))
    for level in measured:
        result, stats = level.result, level.stats
        print()
        print(f"per step at {result.mode} {result.level}" + (f" ({policy})" if policy else "") + ":")
        step_rows = [["step", "replicas", "batch", "alone %", "queue ms", "compute ms/batch", "request ms", "busy %"]]
        for s in stats:
            step_rows.append(
                [
                    s.step,
                    str(s.replicas),
                    _fmt(s.mean_batch, 2),
                    _fmt(100 * s.alone, 0),
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


def _report_baseline(baseline: list[BaselinePoint]) -> dict[str, Any]:
    rows = [["in-process layout", "batch", "rows/s", "p50 ms/call", "CPU ms/row"]]
    for point in baseline:
        rows.append(
            [
                point.layout.name,
                str(point.batch),
                _fmt(point.rows_per_s),
                _fmt(point.latency_ms(50), 2),
                _fmt(point.cpu_ms_per_row, 2),
            ]
        )
    print()
    print(_table(rows))
    for layout in {p.layout: None for p in baseline}:
        print(f"  {layout.describe()}")
    top = best(baseline)
    print(f"in-process limit: {top.rows_per_s:.1f} rows/s ({top.layout.name}, batch {top.batch})")
    one = [p for p in baseline if p.batch == 1 and p.latencies]
    summary: dict[str, Any] = {
        "baseline": [
            {
                "layout": p.layout.describe(),
                "batch": p.batch,
                "rows_per_s": p.rows_per_s,
                "p50_ms": p.latency_ms(50),
                "cpu_ms_per_row": p.cpu_ms_per_row,
            }
            for p in baseline
        ],
        "in_process_limit": top.rows_per_s,
        "in_process_best": f"{top.layout.name}, batch {top.batch}",
        "in_process_min_cpu_ms_per_row": min(p.cpu_ms_per_row for p in baseline),
    }
    print(f"in-process CPU per row: {summary['in_process_min_cpu_ms_per_row']:.2f} ms at the least")
    if one:
        summary["in_process_batch1_p50_ms"] = one[0].latency_ms(50)
        print(f"in-process batch-1 latency: p50 {one[0].latency_ms(50):.1f} ms ({one[0].layout.describe()})")
    return summary


def _report_nearby(nearby: Nearby) -> None:
    if not nearby:
        return
    print()
    rows = [["in-process, measured next to", "limit rows/s", "batch-1 p50 ms"]]
    for label, points in nearby.items():
        latency = [p for p in points if p.batch == 1 and p.latencies]
        rows.append([label, _fmt(points[0].rows_per_s), _fmt(latency[0].latency_ms(50), 2) if latency else "-"])
    print(_table(rows))


def _report_floor(floor: Floor, rows: int, in_process_cpu_ms: float | None) -> dict[str, Any]:
    total = floor.server_ms_per_request + floor.client_ms_per_request
    line = (
        f"protocol floor at C={floor.concurrency}: a server that only reads each request and returns the pipeline's "
        f"answer {floor.delay_ms:.1f} ms later ({floor.requests_per_s:.1f} req/s) costs {floor.server_ms_per_request:.2f} "
        f"ms of CPU per request, the load generator {floor.client_ms_per_request:.2f}"
    )
    figures: dict[str, Any] = {
        "concurrency": floor.concurrency,
        "delay_ms": floor.delay_ms,
        "requests_per_s": floor.requests_per_s,
        "server_cpu_ms_per_request": floor.server_ms_per_request,
        "load_generator_cpu_ms_per_request": floor.client_ms_per_request,
    }
    if in_process_cpu_ms:
        figures["share_of_in_process_cpu"] = total / rows / in_process_cpu_ms
        line += f": together {100 * figures['share_of_in_process_cpu']:.1f}% of the in-process {in_process_cpu_ms:.2f} ms/row"
    print(line)
    return figures


def _report(
    plan: ExecutionPlan,
    measured: Measured,
    baseline: list[BaselinePoint],
    nearby: Nearby,
    args: argparse.Namespace,
    floor: Floor | None = None,
) -> None:
    for policy, levels in measured:
        _report_levels(plan, policy, levels)
    summary: dict[str, Any] = {"pipeline": plan.pipeline, "runs": []}
    if baseline:
        summary.update(_report_baseline(baseline))
    _report_nearby(nearby)
    summary["nearby"] = {
        label: [{"layout": p.layout.describe(), "batch": p.batch, "rows_per_s": p.rows_per_s, "p50_ms": p.latency_ms(50)}
                for p in points]
        for label, points in nearby.items()
    }
    print()
    for policy, levels in measured:
        closed = [lv for lv in levels if lv.result.mode == "closed"]
        busiest = max(closed, key=lambda lv: lv.result.rows_per_s, default=None)
        saturation = busiest.result.rows_per_s if busiest is not None else 0.0
        run_summary: dict[str, Any] = {"policy": policy or "as in the manifest", "saturation_rows_per_s": saturation}
        line = f"{policy or 'pipeline'}: saturation {saturation:.1f} rows/s"
        if busiest is not None and busiest.result.level in nearby:
            limit = nearby[busiest.result.level][0].rows_per_s
            run_summary["ratio_nearby"] = saturation / limit if limit else math.nan
            line += (
                f" at {busiest.result.level} = {100 * run_summary['ratio_nearby']:.1f}% of the in-process limit measured "
                f"next to it ({limit:.1f})"
            )
        if baseline:
            limit = summary["in_process_limit"]
            run_summary["ratio"] = saturation / limit if limit else math.nan
            line += f"; {100 * run_summary['ratio']:.1f}% of the up-front limit"
        single = [lv.result for lv in closed if lv.result.level == "C=1"]
        reference = [p.latency_ms(50) for p in nearby.get("C=1", []) if p.batch == 1 and p.latencies]
        if not reference and "in_process_batch1_p50_ms" in summary:
            reference = [summary["in_process_batch1_p50_ms"]]
        if single and reference:
            gap = single[0].ms(50) - reference[0]
            run_summary["c1_p50_minus_in_process_ms"] = gap
            line += f"; C=1 p50 {single[0].ms(50):.1f} ms = in-process batch-1 p50 {gap:+.1f} ms"
        if busiest is not None and "in_process_min_cpu_ms_per_row" in summary:
            cpu = busiest.cpu_ms_per_row
            run_summary["serving_cpu_ms_per_row"] = cpu
            line += (
                f"; serving CPU {cpu:.2f} ms/row at {busiest.result.level} (in-process "
                f"{summary['in_process_min_cpu_ms_per_row']:.2f}: "
                f"{100 * summary['in_process_min_cpu_ms_per_row'] / cpu:.0f}%)"
            )
        print(line)
        run_summary["levels"] = [
            {
                "mode": r.mode,
                "level": r.level,
                "requests_per_s": r.requests_per_s,
                "rows_per_s": r.rows_per_s,
                "p50_ms": r.ms(50),
                "p95_ms": r.ms(95),
                "p99_ms": r.ms(99),
                "errors": r.errors,
                "cpu_ms_per_row": lv.cpu_ms_per_row,
                "steps": [vars(s) for s in lv.stats],
            }
            for lv in levels
            for r in [lv.result]
        ]
        summary["runs"].append(run_summary)
    if floor is not None:
        summary["floor"] = _report_floor(floor, args.rows, summary.get("in_process_min_cpu_ms_per_row"))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2, default=str))
