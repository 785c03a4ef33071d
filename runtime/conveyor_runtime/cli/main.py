"""`conveyor`: one thin entry point; each sub-command is a plugin in the `conveyor.commands` entry-point group.

A plugin is `register(subparsers)`: it adds its parser and sets `handler=fn(args) -> int`. Plugins keep the
layers one-way (the runtime never imports the operator) and load only when installed. Only the command named
on the command line is loaded, so `conveyor step` in a pod never imports the operator or the benchmarks.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from ..errors import ConveyorError, InvalidManifest, UsageError
from ..version import __version__

__all__ = ["build_parser", "main"]

log = logging.getLogger(__name__)

#: Shown after an error of each kind: what to do next.
_NEXT_STEP: dict[type[ConveyorError], str] = {
    InvalidManifest: "fix the fields listed above and run the command again",
    UsageError: "check the flag or file named above; `conveyor COMMAND --help` lists what each flag takes",
}


def requested_command(argv: Sequence[str]) -> str | None:
    """The sub-command named in `argv` (its first word that is not an option or --log-level's value)."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser with the command that `argv` names, or with every command (no argv, or an unknown name)."""
    entries = sorted(entry_points(group="conveyor.commands"), key=lambda e: e.name)
    if argv is not None:
        wanted = requested_command(argv)
        entries = [e for e in entries if e.name == wanted] or entries
    parser = argparse.ArgumentParser(prog="conveyor", description="Multi-step inference pipelines with dynamic batching.")
    parser.add_argument("--version", action="version", version=f"conveyor {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for entry in entries:
        try:
            register = entry.load()
            register(subparsers)
        except ImportError as exc:  # an optional part is not installed (or not written yet); its command is absent
            log.warning("command %r unavailable (%s); reinstall conveyor with its dependencies", entry.name, exc)
            continue
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
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
