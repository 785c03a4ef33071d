"""Registers `conveyor bench step` (one model step vs in-process ONNX Runtime), `conveyor bench pipeline` and
`conveyor bench overload` (a pipeline offered a multiple of its capacity) and `conveyor bench fuzz` (malformed requests
interleaved with checked valid ones) and `conveyor bench peers` (the same pipeline on Ray Serve and PyTriton)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench", help="measure throughput, p50/p99 latency and realized batch sizes"
    )
    modes = parser.add_subparsers(dest="bench_mode", metavar="MODE", required=True)
    from . import fuzz_bench, overload_bench, pipeline_bench, step_bench
    from .peers import peers_bench

    step_bench.register(modes)
    pipeline_bench.register(modes)
    overload_bench.register(modes)
    fuzz_bench.register(modes)
    peers_bench.register(modes)
