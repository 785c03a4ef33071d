"""How many calls a target that answered "queue full" can hold: the rule behind every refusal made without a call.

A replica's queue (`Replica`) and a step reached by forwarding (`gateway.forwarded_limits`) both follow it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LearnedLimit"]


@dataclass
class LearnedLimit:
    """The calls a target held when it last answered "queue full", and when; None while unknown."""

    limit: int | None = None
    at: float = 0.0

    def learn(self, now: float, holding: int) -> None:
        """It answered "queue full" while `holding` other calls of ours: it has no room beyond those."""
        self.limit = max(0, holding)
        self.at = now

    def forget(self) -> None:
        self.limit = None

    def room(self, now: float, memory_s: float, in_flight: int) -> int | None:
        """Calls it can take beside the `in_flight` ones before it is full again; None when unknown.

        Within `memory_s` of its last "queue full" answer, none beyond the calls it then held. After that, one
        more (a single call finds out whether it has room now, and a "full" answer starts over); after twice
        `memory_s` without such an answer, the limit is forgotten.
        """
        if self.limit is None:
            return None
        age = now - self.at
        if age > 2 * memory_s:
            self.limit = None
            return None
        return max(0, self.limit + (1 if age > memory_s else 0) - in_flight)
