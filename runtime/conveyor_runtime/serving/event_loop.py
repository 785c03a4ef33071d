"""Which asyncio event loop the serving processes (`conveyor step`, `conveyor gateway`, `conveyor run`) run on.

uvloop where it is installed (a dependency everywhere but Windows): with the same gRPC servers it took 2-13% less CPU
per request than asyncio's own loop on the small-model pipeline under load (README, "Event loop").
$CONVEYOR_EVENT_LOOP picks one. `conveyor run` uses it too; it starts its replicas without the loop's fork()-based
subprocess support (see local.spawn).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

from ..errors import UsageError

T = TypeVar("T")

EVENT_LOOP_ENV = "CONVEYOR_EVENT_LOOP"
EventLoopName = Literal["asyncio", "uvloop"]
_CHOICES = ("auto", "asyncio", "uvloop")


def chosen_event_loop(setting: str | None = None, *, uvloop_installed: bool | None = None) -> EventLoopName:
    """The loop that `setting` (default: $CONVEYOR_EVENT_LOOP, else auto) names; auto is uvloop when installed."""
    value = (os.environ.get(EVENT_LOOP_ENV, "auto") if setting is None else setting).strip().lower() or "auto"
    if value not in _CHOICES:
        raise UsageError(f"${EVENT_LOOP_ENV}={value!r}: expected one of {', '.join(_CHOICES)}")
    if uvloop_installed is None:
        uvloop_installed = importlib.util.find_spec("uvloop") is not None
    if value == "uvloop" and not uvloop_installed:
        raise UsageError(f"${EVENT_LOOP_ENV}=uvloop but uvloop is not installed: pip install uvloop, or unset it")
    if value == "auto":
        return "uvloop" if uvloop_installed else "asyncio"
    return "uvloop" if value == "uvloop" else "asyncio"


def run_serving(main: Coroutine[Any, Any, T]) -> T:
    """Run a serving process's `main` to completion on the chosen event loop."""
    try:
        loop = chosen_event_loop()
    except UsageError:
        main.close()  # never awaited: close it so that Python does not warn about it
        raise
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
