"""`conveyor gateway`: serve a pipeline manifest as one model, calling each step's replicas over gRPC."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from ..errors import UsageError
from ..gateway import create_gateway
from ..routing import parse_endpoints
from ..serving import freeze_startup_objects, stop_on_signals, tune_malloc_for_large_requests
from ..serving.event_loop import run_serving
from ..spec import STEP_GRPC_PORT, PipelineManifest, load_manifest

__all__ = ["register", "serve"]

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "gateway", help="serve a pipeline as one model over gRPC and HTTP, balancing calls over step replicas"
    )
    parser.add_argument("--manifest", required=True, help="the InferencePipeline manifest (YAML)")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001; 0 = pick a free one)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000; 0 = free; -1 = off)")
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port (default off)")
    parser.add_argument(
        "--endpoints",
        action="append",
        default=[],
        metavar="STEP=HOST:PORT[,HOST:PORT...]",
        help="fixed replica addresses of a step (repeatable); other steps are found by DNS",
    )
    parser.add_argument(
        "--dns-suffix", default="", help="appended to `<pipeline>-<step>` for DNS lookups (default: none)"
    )
    parser.add_argument("--step-port", type=int, default=STEP_GRPC_PORT, help=f"steps' gRPC port (default {STEP_GRPC_PORT})")
    parser.add_argument("--refresh", type=float, default=5.0, help="seconds between DNS re-resolutions (default 5)")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to finish in-flight requests on SIGTERM")
    parser.add_argument(
        "--pre-stop",
        type=float,
        default=0.0,
        help="seconds to keep answering after SIGTERM while reporting not ready, so load balancers stop "
        "sending first (default 0; the operator sets it in pods)",
    )
    parser.set_defaults(handler=_main)


def _main(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.manifest)
    endpoints = parse_endpoints(args.endpoints, "--endpoints")
    known = {step.name for step in manifest.spec.steps}
    unknown = sorted(set(endpoints) - known)
    if unknown:
        raise UsageError(f"--endpoints: unknown step(s) {unknown}; known steps: {sorted(known)}")
    tune_malloc_for_large_requests()  # before gRPC's threads start: see serving.memory
    freeze_startup_objects()  # see serving.heap
    run_serving(
        serve(
            manifest,
            endpoints=endpoints,
            dns_suffix=args.dns_suffix,
            step_port=args.step_port,
            refresh_s=args.refresh,
            host=args.host,
            grpc_port=args.grpc_port,
            http_port=None if args.http_port < 0 else args.http_port,
            metrics_port=args.metrics_port,
            grace=args.grace,
            pre_stop=args.pre_stop,
        )
    )
    return 0


async def serve(manifest: PipelineManifest, *, grace: float = 10.0, pre_stop: float = 0.0, **options: Any) -> None:
    """Run a gateway until SIGTERM or SIGINT, then shut it down gracefully."""
    gateway = create_gateway(manifest, **options)
    with stop_on_signals(f"gateway {manifest.metadata.name}") as stop:
        await gateway.start()
        try:
            await stop.wait()
            log.info("stopping the gateway (grace %.0fs)", grace)
        finally:
            await gateway.stop(grace, pre_stop=pre_stop)
