"""`conveyor fetch`: download steps' models and op files into the model cache before the steps start.

In a pod (no manifest) it is the step's init container: the step's spec comes from $CONVEYOR_STEP_SPEC, files land
in $CONVEYOR_MODEL_CACHE, and a failure is written to the termination log as ``step <name>: <uri>: <reason>``, where
the operator reads it. With a manifest it fills the local cache for `conveyor run` (pre-warming).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ..errors import ConveyorError, UsageError
from ..sources import FetchError, RetryPolicy, cache_dir, local_file, remote_values
from ..spec import StepSpec, load_manifest, step_from_env
from ..spec.uris import is_remote_uri
from ..step.termination import TERMINATION_LOG, write_termination_message

__all__ = ["fetch_step", "register", "remote_sources", "run"]

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "fetch",
        help="download steps' models and op files (s3://, http(s)://, gs://, az://) into the model cache",
        description="Download the remote sources of a step ($CONVEYOR_STEP_SPEC, what a pod's init container runs) or of "
        "every step of MANIFEST into the model cache ($CONVEYOR_MODEL_CACHE, default ~/.cache/conveyor/models). "
        "Credentials and endpoints come from the standard variables (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...).",
    )
    parser.add_argument("manifest", nargs="?", type=Path, help="pipeline manifest to pre-fetch (default: the step in the env)")
    parser.add_argument("--step", dest="step_name", help="with MANIFEST: only this step")
    parser.add_argument(
        "--attempts",
        type=int,
        default=RetryPolicy.attempts,
        help=f"whole-download attempts per file (default {RetryPolicy.attempts}); each request is also retried",
    )
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"write why the fetch failed to FILE (default {TERMINATION_LOG}, when the kubelet has made it)",
    )
    parser.set_defaults(handler=run)


def remote_sources(step: StepSpec) -> list[tuple[str, str | None]]:
    """What `conveyor fetch` downloads for `step`: its model's remote `uri` (with its digest) and its config's URIs.

    Paths, file:// and pvc:// are left to the step, which reads them where they are.
    """
    found: list[tuple[str, str | None]] = []
    if step.model is not None and step.model.uri is not None and is_remote_uri(step.model.uri):
        found.append((step.model.uri, step.model.sha256))
    found.extend((uri, None) for uri in remote_values(step.config))
    return found


def fetch_step(step: StepSpec, policy: RetryPolicy, cache: Path | None = None) -> list[Path]:
    """Fetch `step`'s remote sources; a failure names the step: ``step <name>: <uri>: <reason>``."""
    paths = []
    for uri, digest in remote_sources(step):
        try:
            paths.append(local_file(uri, sha256=digest, cache=cache, policy=policy))
        except FetchError as exc:
            raise FetchError(f"step {step.name}: {exc.uri}", exc.reason) from exc
    return paths


def _steps(args: argparse.Namespace) -> list[StepSpec]:
    if args.manifest is None:
        if args.step_name is not None:
            raise UsageError("--step needs a MANIFEST")
        return [step_from_env()]
    steps = load_manifest(args.manifest).spec.steps
    if args.step_name is None:
        return list(steps)
    chosen = [s for s in steps if s.name == args.step_name]
    if not chosen:
        raise UsageError(f"--step: {args.manifest} has no step {args.step_name!r}; steps: {', '.join(s.name for s in steps)}")
    return chosen


def run(args: argparse.Namespace) -> int:
    try:
        if args.attempts < 1:
            raise UsageError(f"--attempts: must be >= 1, got {args.attempts}")
        policy = RetryPolicy(attempts=args.attempts)
        cache = cache_dir()
        count = 0
        for step in _steps(args):
            count += len(fetch_step(step, policy, cache))
        log.info("%d file(s) in the model cache %s", count, cache)
    except ConveyorError as exc:
        if args.manifest is None:  # in a pod: the reason where the operator reads it
            write_termination_message(exc, args.termination_log)
        raise
    return 0
