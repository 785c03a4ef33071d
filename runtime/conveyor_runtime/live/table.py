"""The per-step table that `conveyor status` prints (and the operator's status describes): one row per step."""

from __future__ import annotations

from collections.abc import Sequence

from .figures import StepFigures, bottleneck
from .tracker import PipelineFigures

__all__ = ["format_rate", "format_seconds", "render_report", "render_table"]

_HEADER = ("STEP", "PODS", "IN/s", "OUT/s", "REQ/s", "QUEUE", "WAIT-P50", "WAIT-P99", "RUN-P50", "RUN-P99", "BATCH", "FILL", "BUSY", "ERR/s")  # fmt: skip


def format_rate(value: float) -> str:
    """A rate with two or three significant figures: ``0.25``, ``3.5``, ``812``."""
    return f"{value:.2g}" if value < 10 else f"{value:.0f}"


def format_seconds(value: float | None) -> str:
    """A duration in ms or s, ``-`` when nothing was observed."""
    if value is None:
        return "-"
    if value < 1:
        milliseconds = value * 1000
        return f"{milliseconds:.2g}ms" if milliseconds < 10 else f"{milliseconds:.0f}ms"
    return f"{value:.2g}s"


def _row(f: StepFigures) -> tuple[str, ...]:
    return (
        f.name,
        str(f.pods),
        format_rate(f.arrival_items_per_s),
        format_rate(f.completed_items_per_s),
        format_rate(f.completed_requests_per_s),
        f"{f.queue_depth:.0f}",
        format_seconds(f.queue_p50_s),
        format_seconds(f.queue_p99_s),
        format_seconds(f.compute_p50_s),
        format_seconds(f.compute_p99_s),
        "-" if f.mean_batch_size is None else f"{f.mean_batch_size:.1f}",
        "-" if f.batch_fill is None else f"{f.batch_fill:.0%}",
        f"{f.utilization:.0%}",
        format_rate(sum(f.errors_per_s.values())),
    )


def render_table(figures: Sequence[StepFigures]) -> str:
    """Rows per step (IN/OUT: items/s arriving and computed, REQ/s: requests answered OK, QUEUE: rows waiting,
    WAIT/RUN: queue time and compute time per batch p50/p99, mean batch size and fill, busy model instances, errors/s),
    then the bottleneck."""
    rows = [_HEADER, *(_row(f) for f in figures)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    name, reason = bottleneck(figures)
    lines.append(f"bottleneck: {reason}" if name else f"bottleneck: none ({reason})")
    return "\n".join(lines)


def render_report(pipeline: str, figures: PipelineFigures) -> str:
    """The pipeline's line (gateway throughput and latency), the per-step table, then each saturated step."""
    errors = sum(figures.errors_per_s.values())
    head = f"pipeline {pipeline} over {figures.window_s:.1f}s: "
    if figures.gateway_pods:
        head += (
            f"{format_rate(figures.throughput_per_s)} requests/s answered OK, p50 {format_seconds(figures.p50_s)}, "
            f"p99 {format_seconds(figures.p99_s)}, {format_rate(errors)} errors/s"
        )
    else:
        head += "gateway metrics not read (start `conveyor run` with --metrics-port 0)"
    lines = [head, render_table(figures.steps)]
    lines.extend(f"saturated: {why}" for why in figures.saturated.values())
    return "\n".join(lines)
