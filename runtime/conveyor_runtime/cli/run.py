"""`conveyor run PIPELINE.yaml`: the whole pipeline on this machine, on 127.0.0.1, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import UsageError
from ..local import GATEWAY_PLACEMENTS, LocalRunner
from ..serving import freeze_startup_objects, stop_on_signals, tune_malloc_for_large_requests
from ..serving.event_loop import run_serving
from ..spec import PipelineManifest, load_manifest

__all__ = ["build_runner", "parse_replicas", "register"]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run", help="run a pipeline locally: every step replica as a process, plus the gateway"
    )
    parser.add_argument("manifest", help="the InferencePipeline manifest, the same file you would kubectl apply")
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="gateway gRPC port (default: the manifest's spec.gateway.grpcPort, itself 8001 by default; 0 = pick a free one)",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="gateway HTTP port (default: the manifest's spec.gateway.httpPort, itself 8000 by default; 0 = free; -1 = off)",
    )
    parser.add_argument("--metrics-port", type=int, default=None, help="gateway Prometheus port (default off; 0 = free)")
    parser.add_argument(
        "--replicas", action="append", default=[], metavar="STEP=N", help="override a step's replica count (repeatable)"
    )
    parser.add_argument(
        "--addresses-json",
        metavar="FILE",
        default=None,
        help="write the gateway's and every replica's addresses as JSON to FILE once ready ('-' = stdout)",
    )
    parser.add_argument(
        "--gateway",
        choices=GATEWAY_PLACEMENTS,
        default="auto",
        help="where the gateway runs: embedded in the entry step's process, calling the steps there in memory (one "
        "process hop less per request; down while that process restarts), separate in this one, or auto (default): "
        "embedded when the entry step has 1 replica",
    )
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for every replica (default 600)")
    parser.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="on Ctrl-C/SIGTERM: seconds in-flight requests get to finish, then seconds replicas get to stop before SIGKILL (default 10)",
    )
    parser.set_defaults(handler=_main)


def parse_replicas(values: list[str], manifest: PipelineManifest) -> dict[str, int]:
    """``--replicas STEP=N`` overrides, checked against the manifest's steps."""
    known = {step.name for step in manifest.spec.steps}
    result: dict[str, int] = {}
    for value in values:
        step, sep, count = value.partition("=")
        if not sep or step not in known or not count.isdigit() or int(count) < 1:
            raise UsageError(f"--replicas: expected STEP=N with N >= 1 and STEP one of {sorted(known)}, got {value!r}")
        result[step] = int(count)
    return result


def build_runner(args: argparse.Namespace) -> LocalRunner:
    """The runner the parsed command line asks for (ports the command line leaves out come from the manifest)."""
    manifest = load_manifest(args.manifest)
    return LocalRunner(
        args.manifest,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        replicas=parse_replicas(args.replicas, manifest),
        ready_timeout_s=args.ready_timeout,
        grace_s=args.grace,
        log_level=args.log_level.upper(),
        gateway=args.gateway,
    )


def _main(args: argparse.Namespace) -> int:
    runner = build_runner(args)
    tune_malloc_for_large_requests()  # the gateway runs in this process: see serving.memory
    freeze_startup_objects()  # see serving.heap
    # the chosen loop (uvloop where installed), like the pods' processes: replicas are started without fork()
    # (see local.spawn), so gRPC's fork handlers never run in this process while its threads serve
    run_serving(_serve(runner, args.addresses_json))
    return 0


async def _serve(runner: LocalRunner, addresses_json: str | None) -> None:
    with stop_on_signals(f"conveyor run {runner.name}") as stop:
        await runner.run(stop, addresses_json)
