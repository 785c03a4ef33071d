"""Live figures of a running pipeline, read from its steps' Prometheus metrics: used by the operator (status) and by
`conveyor status`. Pure computation over parsed scrapes, plus a small HTTP scraper."""

from .figures import REJECTED_CODE, StepCapacity, StepFigures, bottleneck, histogram_quantile, saturated_steps, step_figures
from .samples import Buckets, HistogramSample, PodSample, parse_metrics
from .scrape import SCRAPE_TIMEOUT_S, fetch_pages, fetch_samples
from .table import format_rate, format_seconds, render_report, render_table
from .tracker import LiveTracker, PipelineFigures, Scrape, gateway_figures

__all__ = [
    "REJECTED_CODE",
    "SCRAPE_TIMEOUT_S",
    "Buckets",
    "HistogramSample",
    "LiveTracker",
    "PipelineFigures",
    "PodSample",
    "Scrape",
    "StepCapacity",
    "StepFigures",
    "bottleneck",
    "fetch_pages",
    "fetch_samples",
    "format_rate",
    "format_seconds",
    "gateway_figures",
    "histogram_quantile",
    "parse_metrics",
    "render_report",
    "render_table",
    "saturated_steps",
    "step_figures",
]
