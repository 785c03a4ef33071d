"""`conveyor bench peers`: the same pipeline on Conveyor, Ray Serve and PyTriton in one run, the systems taking turns
at each load level (ABBA), each checked to give the same top-k answers; throughput, p50/p99 and serving CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt

from conveyor_runtime.spec import load_manifest

from ..load import LoadResult
from ..pipeline_bench import add_payload_arguments, make_payloads
from .plan import PeerPlan, peer_plan
from .process_tree import paused, tree_cpu_seconds
from .system import System

__all__ = [
    "SYSTEMS",
    "Measurement",
    "compare_answers",
    "open_rates",
    "parse_levels",
    "parse_rates",
    "parse_systems",
    "ratio_lines",
    "register",
    "render_table",
    "run",
    "turn_order",
]

#: --systems names: Conveyor as the manifest says or with batching.policy fill; Ray Serve in throughput-optimized mode
#: or with Serve's defaults; PyTriton.
SYSTEMS = ("conveyor", "conveyor-fill", "ray", "ray-default", "pytriton")
PEERS_EXTRA = "pip install 'conveyor[peers]'"


def register(modes: Any) -> None:
    parser: argparse.ArgumentParser = modes.add_parser(
        "peers", help="the same pipeline on Conveyor, Ray Serve and PyTriton in one run (needs conveyor[peers])"
    )
    parser.add_argument("manifest", help="a three-step pipeline: preprocess op -> ONNX model -> postprocess op")
    parser.add_argument(
        "--systems",
        default="conveyor,ray,pytriton",
        help=f"comma-separated, from {', '.join(SYSTEMS)} (default conveyor,ray,pytriton)",
    )
    parser.add_argument("--concurrency", default="1,32", help="closed-loop client counts, comma-separated (default 1,32)")
    parser.add_argument(
        "--rates",
        default="",
        help="open-loop requests/s after the closed loops, comma-separated, or auto: 50%%,80%% of the slowest system's "
        "best closed-loop req/s, a rate every system sustains (default: none)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per system and level (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each (default 2)")
    parser.add_argument("--check", type=int, default=4, help="requests whose answers must match across systems (default 4)")
    parser.add_argument(
        "--others",
        choices=["running", "paused"],
        default="running",
        help="the systems not measured in a turn: left running (default), or stopped (SIGSTOP) until it ends, so that "
        "their idle work (Ray's raylet, GCS and controller) takes no CPU from the measured one; a paused system's tail "
        "latency in its next turn may suffer (see the README)",
    )
    add_payload_arguments(parser)
    parser.set_defaults(handler=run)


def parse_systems(text: str) -> list[str]:
    """--systems as a list; `SystemExit` naming the bad entry."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in SYSTEMS:
            raise SystemExit(f"--systems: each must be one of {', '.join(SYSTEMS)}, got {name!r}")
    if not names or len(set(names)) != len(names):
        raise SystemExit(f"--systems: name each system once, got {text!r}")
    return names


def parse_levels(text: str) -> list[int]:
    """--concurrency as client counts; `SystemExit` for anything but positive integers."""
    try:
        levels = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise SystemExit(f"--concurrency: comma-separated client counts like 1,32, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise SystemExit(f"--concurrency: each count must be >= 1, got {text!r}")
    return levels


def parse_rates(text: str) -> list[float] | None:
    """--rates as requests/s; None for ``auto``; `SystemExit` for anything but positive numbers."""
    if text.strip() == "auto":
        return None
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise SystemExit(f"--rates: comma-separated requests/s like 10,20, or auto, got {text!r}") from None
    if any(not r > 0 for r in rates):
        raise SystemExit(f"--rates: each must be > 0 requests/s, got {text!r}")
    return rates


def open_rates(measurements: list[Measurement], fractions: Sequence[float] = (0.5, 0.8)) -> list[float]:
    """``--rates auto``: `fractions` of the slowest system's best closed-loop req/s (every system sustains them)."""
    best: dict[str, float] = {}
    for m in measurements:
        if m.result.mode == "closed":
            best[m.system] = max(best.get(m.system, 0.0), m.result.requests_per_s)
    slowest = min(best.values(), default=0.0)
    return [round(f * slowest, 1) for f in fractions if f * slowest >= 0.1]


def turn_order(names: Sequence[str], index: int) -> list[str]:
    """Who goes when at the `index`-th level: forward, then backward (ABBA), so drift favours no system."""
    return list(names) if index % 2 == 0 else list(names)[::-1]


def compare_answers(answers: dict[str, list[list[list[str]]]]) -> list[str]:
    """Each way the systems' answers (labels per request) differ from the first system's; empty when all agree."""
    names = list(answers)
    problems = []
    for name in names[1:]:
        for index, (mine, theirs) in enumerate(zip(answers[name], answers[names[0]])):
            if mine != theirs:
                problems.append(f"request {index}: {name} answered {mine}, {names[0]} answered {theirs}")
    return problems


@dataclass
class Measurement:
    """One system at one level: the load's outcome and the CPU seconds spent meanwhile (warm-up and window)."""

    system: str
    result: LoadResult
    cpu_s: float  # the system's whole process tree
    others_cpu_s: float  # the other (idle) systems' trees
    client_cpu_s: float  # this process: load generator and, for PyTriton, the chaining
    elapsed_s: float

    def _per_request(self, seconds: float) -> float:
        answered = self.result.requests_per_s * self.elapsed_s
        return 1000.0 * seconds / answered if answered else math.nan

    @property
    def cpu_ms_per_request(self) -> float:
        return self._per_request(self.cpu_s)

    @property
    def client_ms_per_request(self) -> float:
        return self._per_request(self.client_cpu_s)


def _fmt(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


def render_table(measurements: list[Measurement]) -> str:
    """One row per system and level: by level, then systems in the order first measured."""
    rows = [
        ["system", "load", "req/s", "p50 ms", "p99 ms", "serving CPU ms/req", "client CPU ms/req", "idle others CPU %", "errors"]
    ]
    order = list(dict.fromkeys(m.system for m in measurements))
    for m in sorted(measurements, key=lambda m: (*_level_key(m.result), order.index(m.system))):
        rows.append(
            [
                m.system,
                m.result.level,
                _fmt(m.result.requests_per_s),
                _fmt(m.result.ms(50)),
                _fmt(m.result.ms(99)),
                _fmt(m.cpu_ms_per_request, 2),
                _fmt(m.client_ms_per_request, 2),
                _fmt(100 * m.others_cpu_s / m.elapsed_s if m.elapsed_s else math.nan, 0),
                str(m.result.error_count) + (f" {m.result.errors}" if m.result.errors else ""),
            ]
        )
    return _table(rows)


def _level_key(result: LoadResult) -> tuple[int, float]:
    """Closed loops first, by clients; then open loops, by rate."""
    if result.mode == "closed":
        return 0, float(result.level.removeprefix("C="))
    return 1, float(result.level.removesuffix("/s"))


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and not math.isnan(a) and not math.isnan(b) else "-"


def ratio_lines(measurements: list[Measurement], reference: str = "conveyor") -> list[str]:
    """Per level: the reference system against the best peer (closed loop: most req/s; open loop, where every system
    is offered the same rate: lowest p99), throughput, p50, p99 and CPU per request; at an open-loop level also its
    p99 against each peer's."""
    lines = []
    for level in dict.fromkeys(m.result.level for m in measurements):
        here = [m for m in measurements if m.result.level == level]
        ours = [m for m in here if m.system == reference]
        peers = [m for m in here if not m.system.startswith("conveyor")]
        if not ours or not peers:
            continue
        mine = ours[0]
        if mine.result.mode == "open":
            best = min(peers, key=lambda m: (math.isnan(m.result.ms(99)), m.result.ms(99)))
        else:
            best = max(peers, key=lambda m: m.result.requests_per_s)
        ratio = _ratio

        lines.append(
            f"{level}: {reference} / best peer ({best.system}): throughput "
            f"{ratio(mine.result.requests_per_s, best.result.requests_per_s)}, p50 "
            f"{ratio(mine.result.ms(50), best.result.ms(50))}, p99 {ratio(mine.result.ms(99), best.result.ms(99))}, "
            f"serving CPU/request {ratio(mine.cpu_ms_per_request, best.cpu_ms_per_request)}"
        )
        if mine.result.mode == "open":
            each = ", ".join(f"{m.system} {ratio(mine.result.ms(99), m.result.ms(99))}" for m in peers)
            lines.append(f"{level}: {reference} p99 / each peer's p99: {each}")
    return lines


def _make_system(name: str, plan: PeerPlan, payloads: list[npt.NDArray[Any]], rows: int, cpus: int, clients: int) -> System:
    if name.startswith("conveyor"):
        from .conveyor_system import ConveyorSystem

        return ConveyorSystem(plan, payloads, rows, policy="fill" if name == "conveyor-fill" else "")
    if name.startswith("ray"):
        from .ray_serve import RayServeSystem

        return RayServeSystem(plan, payloads, rows, cpus=cpus, max_clients=clients, throughput_optimized=name == "ray")
    from .pytriton_app import PyTritonSystem

    return PyTritonSystem(plan, payloads, rows)


#: Seconds a system runs idle after being continued, before its turn's warm-up (`--others paused`).
_SETTLE_S = 2.0

#: A load level: ("closed", clients) or ("open", requests/s).
Level = tuple[str, float]


def _measure(system: System, others: list[System], level: Level, args: argparse.Namespace) -> Measurement:
    roots, other_roots = system.pids(), [p for o in others for p in o.pids()]
    with paused(other_roots) if args.others == "paused" else contextlib.nullcontext():
        if args.others == "paused":
            time.sleep(_SETTLE_S)  # the measured system was paused during the previous turn: let its timers catch up
        before, others_before = tree_cpu_seconds(roots), tree_cpu_seconds(other_roots)
        client_before, started = time.process_time(), time.monotonic()
        mode, value = level
        if mode == "closed":
            result = asyncio.run(system.closed_loop(int(value), args.duration, args.warmup))
        else:
            result = asyncio.run(system.open_loop(value, args.duration, args.warmup))
        elapsed, client = time.monotonic() - started, time.process_time() - client_before
        after, others_after = tree_cpu_seconds(roots), tree_cpu_seconds(other_roots)
    used = sum(v - before.get(pid, 0.0) for pid, v in after.items())
    others_used = sum(v - others_before.get(pid, 0.0) for pid, v in others_after.items())
    return Measurement(system.name, result, used, others_used, client, elapsed)


def _check_answers(systems: list[System], payloads: list[npt.NDArray[Any]], count: int) -> None:
    answers = {s.name: [asyncio.run(s.labels(p)) for p in payloads[:count]] for s in systems}
    problems = compare_answers(answers)
    if problems:
        raise SystemExit("the systems compute different answers, so this is no comparison:\n  " + "\n  ".join(problems))
    first = answers[systems[0].name]
    print(f"answers: the top-k labels of {len(first)} request(s) agree across {', '.join(answers)} (e.g. {first[0]})", flush=True)


def _processes(roots: list[int]) -> str:
    """The processes whose CPU counts, by name (what a reader checks: Ray's raylet and workers, tritonserver's stubs)."""
    names: dict[str, int] = {}
    for pid in tree_cpu_seconds(roots):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        names[name] = names.get(name, 0) + 1
    listed = ", ".join(f"{n} x{c}" if c > 1 else n for n, c in sorted(names.items()))
    return f"{sum(names.values())} process(es): {listed}"


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} core(s)"


def run(args: argparse.Namespace) -> int:
    names = parse_systems(args.systems)
    levels = parse_levels(args.concurrency)
    rates = parse_rates(args.rates) if args.rates else []
    manifest_path = Path(args.manifest).resolve()
    try:
        plan = peer_plan(manifest_path)
    except ValueError as exc:
        raise SystemExit(f"{manifest_path.name}: {exc}") from None
    from conveyor_runtime.step import ensure_model, step_cpu_budget

    assert plan.classify.model is not None
    print(f"pipeline {plan.pipeline}: {plan.describe()}", flush=True)
    print(f"model file: {ensure_model(plan.classify.model, plan.base_dir)} (built by model.build when missing)", flush=True)
    width, _, height = args.frame.partition("x")
    payloads = make_payloads(load_manifest(manifest_path), args.payload, args.rows, (int(width), int(height)))
    cpus = step_cpu_budget(None).cpus
    systems = [_make_system(n, plan, payloads, args.rows, cpus, max(levels)) for n in names]
    measurements: list[Measurement] = []
    print(f"before: {_load()}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-peers-"))
    finished = False
    try:
        for system in systems:
            system.start(workdir)
            print(f"{system.name}: CPU counted over {_processes(system.pids())}", flush=True)
        _check_answers(systems, payloads, args.check)
        print(
            f"load: {args.rows} row(s)/request, {args.warmup:g}s warm-up + {args.duration:g}s per system and level; "
            + (
                "the other systems paused (SIGSTOP) during each turn"
                if args.others == "paused"
                else "the other systems left running during each turn"
            ),
            flush=True,
        )
        schedule: list[Level] = [("closed", float(c)) for c in levels]
        for index, level in enumerate(schedule):
            _measure_level(systems, names, index, level, measurements, args)
        if rates is None:
            rates = open_rates(measurements)
            print(f"open-loop rates (auto: 50%, 80% of the slowest system's best closed loop): {rates}", flush=True)
        for index, rate in enumerate(rates, start=len(schedule)):
            _measure_level(systems, names, index, ("open", rate), measurements, args)
        finished = True
    except KeyboardInterrupt:
        print("interrupted: stopping every system", flush=True)
        raise
    finally:
        for system in reversed(systems):
            print(f"stopping {system.name} ...", flush=True)
            try:
                system.stop()
            except Exception as exc:  # stop the others whatever one of them does
                print(f"stopping {system.name} failed: {type(exc).__name__}: {exc}", flush=True)
        if finished:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"the servers' logs are kept in {workdir}", flush=True)
    print(f"after: {_load()}")
    _report(systems, measurements)
    return 0


def _measure_level(
    systems: list[System], names: list[str], index: int, level: Level, measurements: list[Measurement], args: argparse.Namespace
) -> None:
    """Every system at one level, in `turn_order`."""
    mode, value = level
    label = f"C={value:g}" if mode == "closed" else f"open {value:g}/s"
    for name in turn_order(names, index):
        system = next(s for s in systems if s.name == name)
        print(f"  {label} {name} ... ({_load()})", flush=True)
        measurements.append(_measure(system, [s for s in systems if s is not system], level, args))


def _report(systems: list[System], measurements: list[Measurement]) -> None:
    print()
    for system in systems:
        print(f"{system.name}: {system.description}")
    print()
    print(_table_heading())
    print(render_table(measurements))
    print()
    for line in ratio_lines(measurements):
        print(line)


def _table_heading() -> str:
    return (
        "serving CPU: user+system CPU of the system's whole process tree over warm-up and window, per answered request; "
        "client: this process (load generator; for pytriton also the chaining of its three calls)"
    )
