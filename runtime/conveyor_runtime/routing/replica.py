"""One replica of a step as its caller (the gateway, or a forwarding step) sees it: its channel, whether it is in rotation, and how full it is.

A replica is in rotation while its health service says SERVING, it is not ejected (its calls stalled and a
health check got no answer) and it is still listed by its endpoint source. Its `limit` is what the gateway
learned from its last "queue full" answer: how many of this gateway's calls it was holding then.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc.aio

from ..protocol import InferenceStub
from .call_stream import CallStream
from .limit import LearnedLimit

__all__ = ["Replica"]


@dataclass(eq=False)
class Replica:
    """One replica of a step: its channel, health, outstanding calls and learned capacity."""

    address: str
    channel: grpc.aio.Channel
    stub: InferenceStub
    outstanding: int = 0
    serving: bool = False
    ejected: bool = False
    retired: bool = False
    served: int = 0
    #: This caller's calls that the replica held when it last answered RESOURCE_EXHAUSTED, and when.
    learned: LearnedLimit = field(default_factory=LearnedLimit)
    #: The latest deadline among the calls sent to it (a dropped replica's channel stays open until then).
    until: float = 0.0
    calls: set[Any] = field(default_factory=set, repr=False)
    abandoned: set[Any] = field(default_factory=set, repr=False)
    probing: bool = False
    probed_at: float = float("-inf")
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    #: small calls go as messages on this stream (None: every call is unary; see `protocol.call_stream`)
    stream: CallStream | None = field(default=None, repr=False)

    @property
    def healthy(self) -> bool:
        """In rotation: SERVING, not ejected, still listed."""
        return self.serving and not self.ejected and not self.retired

    @property
    def limit(self) -> int | None:
        """The calls it held at its last "queue full" answer (None while unknown or forgotten)."""
        return self.learned.limit

    def learn_full(self, now: float, holding: int) -> None:
        """It answered "queue full" while `holding` other calls of ours: it has no room beyond those."""
        self.learned.learn(now, holding)

    def room(self, now: float, memory_s: float) -> int | None:
        """Calls it can take before it is full again; None when unknown (see `LearnedLimit.room`)."""
        return self.learned.room(now, memory_s, self.outstanding)

    def abandon_calls(self) -> None:
        """Cancel the calls in flight to it (it stopped answering); the balancer sends them elsewhere."""
        for call in list(self.calls):
            self.abandoned.add(call)
            call.cancel()
