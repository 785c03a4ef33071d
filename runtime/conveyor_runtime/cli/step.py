"""`conveyor step`: serve one step of a pipeline (what each step's pod runs)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConveyorError, UsageError
from ..routing import parse_endpoints
from ..serving import freeze_startup_objects, stop_on_signals
from ..serving.event_loop import run_serving
from ..spec import (
    METRICS_PORT,
    STEP_GRPC_PORT,
    StepSpec,
    hosted_steps,
    in_process_steps_from_env,
    load_manifest,
    step_from_env,
)
from ..step import (
    DEFAULT_GRACE_S,
    DEFAULT_PRE_STOP_S,
    TERMINATION_LOG,
    PeerSources,
    create_step_server,
    peer_sources,
    write_termination_message,
)

__all__ = ["PIPELINE_ENV", "PRE_STOP_ENV", "load_step_spec", "pre_stop_delay", "register", "run"]

log = logging.getLogger(__name__)

#: Sets `--pre-stop-delay` where editing the command is awkward (a Deployment's env, `conveyor run`).
PRE_STOP_ENV = "CONVEYOR_PRE_STOP_DELAY_S"
#: The pipeline a step's pod belongs to (the operator sets it): its peers are at their headless Services' DNS names.
PIPELINE_ENV = "CONVEYOR_PIPELINE"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {text!r}")
    return value


def pre_stop_delay(args: argparse.Namespace) -> float:
    """Seconds of pre-stop delay: ``--pre-stop-delay``, else $CONVEYOR_PRE_STOP_DELAY_S, else the default."""
    if args.pre_stop_delay is not None:
        return float(args.pre_stop_delay)
    raw = os.environ.get(PRE_STOP_ENV)
    if not raw:
        return DEFAULT_PRE_STOP_S
    try:
        return _seconds(raw)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{PRE_STOP_ENV} {exc}; set it to e.g. 5, or 0 for no pre-stop delay") from None


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
    parser.add_argument(
        "--grace",
        type=_seconds,
        default=DEFAULT_GRACE_S,
        help=f"on SIGTERM, at most this many seconds to finish queued and in-flight work (default {DEFAULT_GRACE_S:g}); "
        "the step exits as soon as the work is done",
    )
    parser.add_argument(
        "--pre-stop-delay",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help=f"on SIGTERM, keep answering calls this long while reporting NOT_SERVING, so that endpoint lists drop the pod "
        f"first (default ${PRE_STOP_ENV} or {DEFAULT_PRE_STOP_S:g}; 0 = none; a second signal skips it)",
    )
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"write why the step stopped (it could not start, or failed) to FILE (default {TERMINATION_LOG}, when the "
        "kubelet has made it: Kubernetes then shows it as the container's termination message)",
    )
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        dest="peers",
        metavar="STEP=HOST:PORT[,HOST:PORT...]",
        help="replica addresses of a step this step may forward its outputs to (repeatable); other steps are found "
        f"by DNS as <pipeline>-<step> when ${PIPELINE_ENV} is set, else outputs go back to the caller",
    )
    parser.add_argument("--manifest", type=Path, help="pipeline manifest to take the step from (instead of the env)")
    parser.add_argument("--step", dest="step_name", help="name of the step in --manifest")
    parser.set_defaults(handler=run)


def load_step_spec(manifest: Path | None, step_name: str | None) -> tuple[StepSpec, Path | None]:
    """The step's spec and the base dir for its relative paths (the manifest's directory, if any)."""
    loaded = _load_step(manifest, step_name)
    return loaded.spec, loaded.base_dir


@dataclass(frozen=True)
class _LoadedStep:
    """A step to serve: its spec, base dir, field path for errors (``spec.steps[2]``; ``step`` from the env), and the
    steps that run in its process (`inProcessWith` it) with their field paths."""

    spec: StepSpec
    base_dir: Path | None
    where: str
    in_process: list[StepSpec] = field(default_factory=list)
    in_process_where: list[str] = field(default_factory=list)


def _load_step(manifest: Path | None, step_name: str | None) -> _LoadedStep:
    if manifest is None:
        if step_name is not None:
            raise UsageError("--step needs --manifest FILE")
        return _LoadedStep(step_from_env(), None, "step", in_process_steps_from_env())
    if step_name is None:
        raise UsageError(f"--manifest {manifest} needs --step NAME: name the step to serve from it")
    hosted = hosted_steps(load_manifest(manifest).spec, step_name, str(manifest))
    return _LoadedStep(hosted.spec, manifest.resolve().parent, hosted.where, hosted.guests, hosted.guests_where)


def run(args: argparse.Namespace) -> int:
    try:
        loaded = _load_step(args.manifest, args.step_name)
        pre_stop = pre_stop_delay(args)
        peers = peer_sources(parse_endpoints(args.peers, "--peer"), pipeline=os.environ.get(PIPELINE_ENV) or None)
        freeze_startup_objects()  # see serving.heap
        run_serving(_serve(loaded, args, pre_stop, peers))
    except Exception as exc:  # the step's own words where `kubectl describe` and the operator read them
        write_termination_message(exc, args.termination_log)
        raise
    return 0


async def _serve(loaded: _LoadedStep, args: argparse.Namespace, pre_stop_s: float, peers: PeerSources) -> None:
    spec = loaded.spec
    server = create_step_server(
        spec,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port or None,
        base_dir=loaded.base_dir,
        grace_s=args.grace,
        pre_stop_s=pre_stop_s,
        where=loaded.where,
        peers=peers,
        in_process=loaded.in_process,
        in_process_where=loaded.in_process_where,
    )
    log.info("step %s: loading", spec.name)
    hurry = asyncio.Event()
    with stop_on_signals(f"step {spec.name}", hurry=hurry) as stop:
        await server.start()
        try:
            await server.serve_until(stop)
        finally:
            await server.stop(hurry=hurry)
    if server.failure is not None:
        raise ConveyorError(
            f"step {spec.name!r}: the batcher stopped ({server.failure!r}), so the step exited; "
            "the traceback is in the log above (a bug: please report it)"
        )
