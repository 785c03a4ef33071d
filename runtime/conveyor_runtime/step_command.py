"""`conveyor step`: serve one step of a pipeline (what each step's pod runs)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from .errors import FieldError, InvalidManifest
from .spec import METRICS_PORT, STEP_GRPC_PORT, StepSpec, load_manifest, step_from_env
from .step_server import create_step_server

__all__ = ["register", "run", "load_step_spec"]

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "step",
        help="serve one pipeline step over gRPC (Open Inference Protocol)",
        description="Serve one step. Its spec comes from $CONVEYOR_STEP_SPEC, or from --manifest FILE --step NAME.",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=STEP_GRPC_PORT, help=f"gRPC port (default {STEP_GRPC_PORT})")
    parser.add_argument(
        "--metrics-port", type=int, default=METRICS_PORT, help=f"Prometheus port (default {METRICS_PORT}; 0 disables)"
    )
    parser.add_argument("--grace", type=float, default=20.0, help="seconds to finish queued work on SIGTERM (default 20)")
    parser.add_argument("--manifest", type=Path, help="pipeline manifest to take the step from (instead of the env)")
    parser.add_argument("--step", dest="step_name", help="name of the step in --manifest")
    parser.set_defaults(handler=run)


def load_step_spec(manifest: Path | None, step_name: str | None) -> tuple[StepSpec, Path | None]:
    """The step's spec and the base dir for its relative paths (the manifest's directory, if any)."""
    if manifest is None:
        if step_name is not None:
            raise InvalidManifest([FieldError("--step", "needs --manifest FILE")])
        return step_from_env(), None
    if step_name is None:
        raise InvalidManifest([FieldError("--step", "name the step to serve from the manifest")], str(manifest))
    pipeline = load_manifest(manifest)
    for step in pipeline.spec.steps:
        if step.name == step_name:
            return step, manifest.resolve().parent
    names = ", ".join(s.name for s in pipeline.spec.steps)
    raise InvalidManifest([FieldError("--step", f"no step {step_name!r}; steps: {names}")], str(manifest))


def run(args: argparse.Namespace) -> int:
    spec, base_dir = load_step_spec(args.manifest, args.step_name)
    asyncio.run(_serve(spec, args, base_dir))
    return 0


async def _serve(spec: StepSpec, args: argparse.Namespace, base_dir: Path | None) -> None:
    server = create_step_server(
        spec,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port or None,
        base_dir=base_dir,
        grace_s=args.grace,
    )
    log.info("step %s: loading", spec.name)
    await server.start()
    loop = asyncio.get_running_loop()
    stopping: set[asyncio.Task[None]] = set()

    def on_signal(signum: signal.Signals) -> None:
        if stopping:
            return
        log.info("step %s: %s received; shutting down gracefully", spec.name, signum.name)
        task = loop.create_task(server.stop())
        stopping.add(task)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await server.wait_for_termination()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await server.stop()
