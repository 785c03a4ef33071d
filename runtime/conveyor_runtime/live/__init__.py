"""Live figures of a running pipeline, read from its steps' Prometheus metrics: used by the operator (status) and by
`conveyor status`. Pure computation over parsed scrapes, plus a small HTTP scraper."""

from .figures import REJECTED_CODE, StepCapacity, StepFigures, bottleneck, histogram_quantile, saturated_steps, step_figures
from .samples import Buckets, HistogramSample, PodSample, parse_metrics
from .table import format_rate, format_seconds, render_table

__all__ = [
    "REJECTED_CODE",
    "Buckets",
    "HistogramSample",
    "PodSample",
    "StepCapacity",
    "StepFigures",
    "bottleneck",
    "format_rate",
    "format_seconds",
    "histogram_quantile",
    "parse_metrics",
    "render_table",
    "saturated_steps",
    "step_figures",
]
