"""Registers `conveyor bench step` (one model step vs in-process ONNX Runtime) and `conveyor bench pipeline`."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench", help="measure throughput, p50/p99 latency and realized batch sizes"
    )
    modes = parser.add_subparsers(dest="bench_mode", metavar="MODE", required=True)
    from . import pipeline_bench, step_bench

    step_bench.register(modes)
    pipeline_bench.register(modes)
