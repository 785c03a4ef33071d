"""Graceful stop on SIGTERM (Kubernetes) and SIGINT (Ctrl-C) for the long-running commands."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

__all__ = ["stop_on_signals"]

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(what: str, *, hurry: asyncio.Event | None = None) -> Iterator[asyncio.Event]:
    """An Event that SIGTERM or SIGINT sets while the block runs (call inside the event loop).

    A second signal sets `hurry`, if given: the command skips what is left of its waits (e.g. a pre-stop delay).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        if not stop.is_set():
            log.info("%s: %s received; shutting down gracefully", what, signum.name)
            stop.set()
        elif hurry is not None and not hurry.is_set():
            log.info("%s: second %s received; skipping the rest of the pre-stop delay", what, signum.name)
            hurry.set()

    for signum in SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield stop
    finally:
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)
