"""`conveyor operator` (run the kopf operator) and `conveyor crd` (print, write or check the generated CRD)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from conveyor_runtime.errors import UsageError

from .config import OperatorConfig

__all__ = ["register", "register_crd", "run_crd", "run_operator"]

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add `conveyor operator`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "operator",
        help="run the InferencePipeline operator (in a cluster, or against KUBECONFIG)",
        description="Reconcile InferencePipelines into Deployments, Services and a gateway. "
        "Defaults come from CONVEYOR_IMAGE, CONVEYOR_RECONCILE_INTERVAL and CONVEYOR_WATCH_NAMESPACES.",
    )
    parser.add_argument(
        "-n", "--namespace", action="append", default=None, metavar="NS",
        help="watch this namespace (repeatable; globs allowed); default: CONVEYOR_WATCH_NAMESPACES, else all",
    )
    parser.add_argument("--image", default=None, help="runtime image for pipelines without spec.image (CONVEYOR_IMAGE)")
    parser.add_argument(
        "--reconcile-interval", type=float, default=None, metavar="SECONDS",
        help="seconds between resyncs of each pipeline (CONVEYOR_RECONCILE_INTERVAL, default 15)",
    )
    parser.add_argument(
        "--liveness", default="http://0.0.0.0:8080/healthz", metavar="URL",
        help="kopf's liveness endpoint (default http://0.0.0.0:8080/healthz; '' to disable)",
    )
    parser.set_defaults(handler=run_operator)


def _config(args: argparse.Namespace) -> OperatorConfig:
    base = OperatorConfig.from_env()
    try:
        return OperatorConfig(
            image=args.image or base.image,
            reconcile_interval=args.reconcile_interval if args.reconcile_interval is not None else base.reconcile_interval,
            namespaces=tuple(args.namespace) if args.namespace else base.namespaces,
        )
    except UsageError:
        raise
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def run_operator(args: argparse.Namespace) -> int:
    import kopf  # imported here so that `conveyor crd` and --help stay fast

    from .handlers import build_registry

    config = _config(args)
    logger.info("starting the operator (watching %s)", ", ".join(config.namespaces) or "all namespaces")
    kopf.run(
        registry=build_registry(config),
        standalone=True,
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=args.liveness or None,
    )
    return 0


def register_crd(subparsers: Any) -> None:
    """Add `conveyor crd`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "crd",
        help="print the InferencePipeline CRD generated from the spec model",
        description="Print the CRD (default), write it to files (-o, repeatable) or check files are current (--check).",
    )
    parser.add_argument("-o", "--output", action="append", type=Path, default=[], metavar="FILE", help="write the CRD here")
    parser.add_argument("--check", action="store_true", help="exit 1 if any --output file differs from the model")
    parser.set_defaults(handler=run_crd)


def run_crd(args: argparse.Namespace) -> int:
    from .crd import crd_yaml

    text = crd_yaml()
    if not args.output:
        sys.stdout.write(text)
        return 0
    stale = []
    for path in args.output:
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}", file=sys.stderr)
    if stale:
        print(f"stale CRD: {', '.join(stale)}; regenerate with: conveyor crd -o {' -o '.join(stale)}", file=sys.stderr)
        return 1
    return 0
