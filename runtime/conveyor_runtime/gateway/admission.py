"""The gateway's entry limits: how many requests may be in flight, and the deadline of a request that has none."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import QueueFull

__all__ = ["Admission"]


class Admission:
    """Admits a request while fewer than `max_concurrent` are in flight; one more is refused at once.

    Refusing at the door keeps a rejection cheap (no parse, no step call) and keeps memory bounded under
    overload; the client sees RESOURCE_EXHAUSTED (HTTP 429) and may retry. Used from the event loop only.
    """

    def __init__(self, max_concurrent: int, default_timeout_s: float) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        if default_timeout_s <= 0:
            raise ValueError(f"default_timeout_s must be > 0, got {default_timeout_s}")
        self.max_concurrent = max_concurrent
        self.default_timeout_s = default_timeout_s
        self.in_flight = 0

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Count one request in flight for the block's duration, or raise `QueueFull` when the gateway is full."""
        if self.in_flight >= self.max_concurrent:
            raise QueueFull(
                f"the gateway already has {self.max_concurrent} requests in flight "
                "(spec.gateway.maxConcurrentRequests); retry later or add gateway replicas"
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def deadline(self, timeout_s: float | None) -> float:
        """The monotonic deadline for a request whose client gave `timeout_s` (None: the default timeout)."""
        return time.monotonic() + (self.default_timeout_s if timeout_s is None else timeout_s)
