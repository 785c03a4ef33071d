"""`conveyor run --gateway embedded` (the default where the entry step has one replica): a step replica that also
serves the pipeline's gateway.

The gateway calls the steps served in this process (the step and those `inProcessWith` it) in memory, with no gRPC
hop to another process and back, and the others over their replicas as usual. On a machine whose cores the gateway
shares with the steps that hop is work taken from the model, and a wake-up of another process per request.

The runner starts it as ``python -m conveyor_runtime.local.gateway_host`` (`conveyor step` imports no gateway). On
SIGTERM it stops like the runner does: the gateway first (its requests finish, through every step), then the step.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConveyorError
from ..gateway import Gateway, StaticEndpoints
from ..routing import parse_endpoints
from ..serving import LARGE_REQUEST_BYTES, freeze_startup_objects, stop_on_signals, tune_malloc_for_large_requests
from ..serving.event_loop import run_serving
from ..spec import PipelineManifest, hosted_steps, load_manifest
from ..step import DEFAULT_GRACE_S, InProcessStepClient, StepServer, create_step_server, peer_sources

__all__ = ["build_parser", "create_gateway_host", "main"]

log = logging.getLogger(__name__)

#: Buffers at least this long are mapped on their own and unmapped when freed: requests that large (after which the
#: gateway trims the heap too), not a model step's batches.
EMBEDDED_MMAP_THRESHOLD_BYTES = LARGE_REQUEST_BYTES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m conveyor_runtime.local.gateway_host",
        description="Serve one step of a manifest and the pipeline's gateway in one process (conveyor run "
        "--gateway embedded starts it).",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    parser.add_argument("--manifest", type=Path, required=True, help="the pipeline manifest")
    parser.add_argument("--step", dest="step_name", required=True, help="the step to serve (with its inProcessWith guests)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="the step's gRPC port")
    parser.add_argument("--metrics-port", type=int, default=0, help="the step's Prometheus port (0: none)")
    parser.add_argument("--peer", action="append", default=[], dest="peers", metavar="STEP=HOST:PORT[,...]")
    parser.add_argument(
        "--endpoint", action="append", default=[], dest="endpoints", metavar="STEP=HOST:PORT[,...]",
        help="replica addresses of a step the gateway calls that runs in another process (repeatable)",
    )
    parser.add_argument("--gateway-grpc-port", type=int, required=True, help="the gateway's gRPC port")
    parser.add_argument("--gateway-http-port", type=int, default=-1, help="the gateway's HTTP port (-1: none)")
    parser.add_argument("--gateway-metrics-port", type=int, default=-1, help="the gateway's Prometheus port (-1: none)")
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE_S, help="seconds to drain on SIGTERM")
    return parser


def create_gateway_host(
    manifest: PipelineManifest, manifest_path: Path, step_name: str, args: argparse.Namespace
) -> StepServer:
    """The step server of `step_name` and its guests, as `conveyor step --manifest --step` would make it."""
    hosted = hosted_steps(manifest.spec, step_name, str(manifest_path))
    return create_step_server(
        hosted.spec,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port or None,
        base_dir=manifest_path.resolve().parent,
        grace_s=args.grace,
        where=hosted.where,
        peers=peer_sources(parse_endpoints(args.peers, "--peer")),
        in_process=hosted.guests,
        in_process_where=hosted.guests_where,
    )


async def _serve(args: argparse.Namespace) -> None:
    manifest = load_manifest(args.manifest)
    server = create_gateway_host(manifest, args.manifest, args.step_name, args)
    endpoints = parse_endpoints(args.endpoints, "--endpoint")
    hurry = asyncio.Event()
    with stop_on_signals(f"step {args.step_name} with the gateway", hurry=hurry) as stop:
        await server.start()
        timeout = manifest.spec.gateway.defaultTimeoutSeconds
        in_process = {
            name: InProcessStepClient(server.servicer, name, default_timeout_s=timeout)
            for name in server.servicer.model_names
        }
        sources = {name: StaticEndpoints(addresses) for name, addresses in endpoints.items() if name not in in_process}
        gateway: Gateway | None = None
        try:
            gateway = Gateway(
                manifest,
                sources,
                in_process=in_process,
                host=args.host,
                grpc_port=args.gateway_grpc_port,
                http_port=None if args.gateway_http_port < 0 else args.gateway_http_port,
                metrics_port=None if args.gateway_metrics_port < 0 else args.gateway_metrics_port,
            )
            try:
                await gateway.start()
            except OSError as exc:
                raise ConveyorError(f"{exc}; pass --grpc-port 0 --http-port 0 to pick free ports") from None
            log.info(
                "gateway for pipeline %s in step %s's process: in memory to step(s) %s",
                gateway.name,
                args.step_name,
                ", ".join(in_process),
            )
            await server.serve_until(stop)
        finally:
            if gateway is not None:
                await gateway.stop(args.grace)
            await server.stop(hurry=hurry)
    if server.failure is not None:
        raise ConveyorError(f"step {args.step_name!r}: the batcher stopped ({server.failure!r}), so the step exited")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # Large requests arrive here, as at a gateway of its own (see serving.memory), but the gateway's 1 MiB mmap
        # threshold would map and unmap every batch a model step concatenates (4.8 MB at ResNet-18 batch 8: 123 page
        # faults per row instead of 3 at 32 clients), and two arenas would make the step's threads share them. At
        # 8 MiB (mapped and trimmed): 7 faults per row there, and `conveyor bench fuzz`'s RSS bar holds (the default
        # dynamic thresholds left this process 23% above its start; a 16 MiB trim threshold, 16%).
        tune_malloc_for_large_requests(
            arenas=None, mmap_threshold=EMBEDDED_MMAP_THRESHOLD_BYTES, trim_threshold=EMBEDDED_MMAP_THRESHOLD_BYTES
        )
        freeze_startup_objects()  # see serving.heap
        run_serving(_serve(args))
    except ConveyorError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
