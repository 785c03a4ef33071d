"""`conveyor`: one thin entry point; each sub-command is a plugin in the `conveyor.commands` entry-point group.

A plugin is `register(subparsers)`: it adds its parser and sets `handler=fn(args) -> int`. Plugins keep the
layers one-way (the runtime never imports the operator) and load only when installed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from ..errors import ConveyorError, InvalidManifest, UsageError

__all__ = ["build_parser", "main"]

log = logging.getLogger(__name__)

#: Shown after an error of each kind: what to do next.
_NEXT_STEP: dict[type[ConveyorError], str] = {
    InvalidManifest: "fix the fields listed above and run the command again",
    UsageError: "check the flag or file named above; `conveyor COMMAND --help` lists what each flag takes",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description="Multi-step inference pipelines with dynamic batching.")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for entry in sorted(entry_points(group="conveyor.commands"), key=lambda e: e.name):
        try:
            register = entry.load()
            register(subparsers)
        except ImportError as exc:  # an optional part is not installed (or not written yet); its command is absent
            log.warning("command %r unavailable (%s); reinstall conveyor with its dependencies", entry.name, exc)
            continue
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except ConveyorError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        for kind, hint in _NEXT_STEP.items():
            if isinstance(exc, kind):
                print(f"next: {hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
