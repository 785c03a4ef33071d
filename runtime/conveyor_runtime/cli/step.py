"""`conveyor step`: serve one step of a pipeline (what each step's pod runs)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..serving import stop_on_signals
from ..spec import METRICS_PORT, STEP_GRPC_PORT, StepSpec, load_manifest, step_from_env
from ..step import create_step_server

__all__ = ["load_step_spec", "register", "run"]

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
            raise UsageError("--step needs --manifest FILE")
        return step_from_env(), None
    if step_name is None:
        raise UsageError(f"--manifest {manifest} needs --step NAME: name the step to serve from it")
    pipeline = load_manifest(manifest)
    for step in pipeline.spec.steps:
        if step.name == step_name:
            return step, manifest.resolve().parent
    names = ", ".join(s.name for s in pipeline.spec.steps)
    raise UsageError(f"--step: {manifest} has no step {step_name!r}; steps: {names}")


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
    with stop_on_signals(f"step {spec.name}") as stop:
        await server.start()
        try:
            await stop.wait()
        finally:
            await server.stop()
