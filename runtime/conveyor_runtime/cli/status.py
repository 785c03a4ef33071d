"""`conveyor status`: each step's live figures of a pipeline that `conveyor run` started, from its replicas' metrics.

The same figures and table as the operator's status (conveyor_runtime.live), over a window of a few seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..live import LiveTracker, Scrape, StepCapacity, fetch_samples, render_report
from ..spec import load_manifest

__all__ = ["read_addresses", "register"]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status", help="print each step's live figures (rates, latency, batch fill, utilization, bottleneck) of a local pipeline"
    )
    parser.add_argument("manifest", help="the manifest `conveyor run` was started with")
    parser.add_argument(
        "--addresses", required=True, metavar="FILE", help="the file `conveyor run --addresses-json FILE` keeps current"
    )
    parser.add_argument("--window", type=float, default=5.0, help="seconds between the two reads (default 5)")
    parser.add_argument("--watch", action="store_true", help="print a new table every window until Ctrl-C")
    parser.set_defaults(handler=_main)


def read_addresses(path: str) -> dict[str, Any]:
    """The addresses `conveyor run` wrote: its gateway's and every replica's metrics address."""
    try:
        found = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(
            f"--addresses: cannot read {path} ({exc.strerror}); start the pipeline with `conveyor run MANIFEST "
            "--addresses-json FILE` and pass that FILE"
        ) from None
    except ValueError as exc:
        raise UsageError(
            f"--addresses: {path} is not JSON ({exc}); pass the file `conveyor run --addresses-json` wrote"
        ) from None
    if not isinstance(found, dict) or not isinstance(found.get("steps"), dict):
        raise UsageError(f"--addresses: {path} has no `steps`; pass the file `conveyor run --addresses-json` wrote")
    return found


def _urls(addresses: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str | None]]:
    """Metrics URLs by replica key, and each key's step (None: the gateway)."""
    urls: dict[str, str] = {}
    owners: dict[str, str | None] = {}
    for step, replicas in addresses["steps"].items():
        for index, replica in enumerate(replicas):
            if replica.get("metrics"):
                key = f"{step}/{index}"
                urls[key], owners[key] = f"http://{replica['metrics']}/metrics", step
    if addresses.get("metrics"):
        urls["gateway"], owners["gateway"] = f"http://{addresses['metrics']}/metrics", None
    return urls, owners


def _scrape(addresses: Mapping[str, Any]) -> Scrape:
    urls, owners = _urls(addresses)
    samples = fetch_samples(urls, steps={key: step for key, step in owners.items() if step is not None})
    steps: dict[str, dict[str, Any]] = {}
    gateway = {}
    for key, sample in samples.items():
        step = owners[key]
        if step is None:
            gateway[key] = sample
        else:
            steps.setdefault(step, {})[key] = sample
    return Scrape(at=time.monotonic(), steps=steps, gateway=gateway)


def _main(args: argparse.Namespace) -> int:
    if args.window <= 0:
        raise UsageError(f"--window must be > 0 seconds, got {args.window}")
    manifest = load_manifest(args.manifest)
    tracker = LiveTracker({step.name: StepCapacity.of(step) for step in manifest.spec.steps})
    tracker.update(_scrape(read_addresses(args.addresses)))
    while True:
        time.sleep(args.window)
        figures = tracker.update(_scrape(read_addresses(args.addresses)))  # re-read: replicas restart on new ports
        if figures is not None:
            print(render_report(manifest.metadata.name, figures), flush=True)
        if not args.watch:
            return 0
        print(flush=True)
