"""What the gateway knows about the fullness of steps it does not call itself: those a request reaches by forwarding.

The gateway refuses a request at the entry while a step it calls is known to be full (`Balancer.saturated`), so that
a refusal costs no step any work. A step reached by forwarding answers only through the step before it, so its
"queue full" arrives relayed; this keeps, per such step, how many of this gateway's requests were on their way
through it when it refused, and the executor refuses new requests at the entry beyond that number: the rule a
`Replica` applies to its own calls (`routing.LearnedLimit`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import StepCallError
from ..routing import LearnedLimit

__all__ = ["ForwardedLimits"]


class ForwardedLimits:
    """Requests in flight through each forwarded step, and the limits learned from their relayed refusals."""

    def __init__(self, memory_s: float = 5.0) -> None:
        self.memory_s = memory_s
        self.through: dict[str, int] = {}
        self._limits: dict[str, LearnedLimit] = {}
        self._messages: dict[str, str] = {}  # each step's words when it last refused

    def enter(self, steps: Sequence[str]) -> None:
        """A request was sent on its way through `steps`."""
        for step in steps:
            self.through[step] = self.through.get(step, 0) + 1

    def leave(self, steps: Sequence[str]) -> None:
        """That request came back (answered or failed)."""
        for step in steps:
            self.through[step] -= 1

    def learn_full(self, error: StepCallError, now: float) -> None:
        """`error.step` refused a request (relayed) while the others in flight through it were still there."""
        self._limits.setdefault(error.step, LearnedLimit()).learn(now, self.through.get(error.step, 0) - 1)
        self._messages[error.step] = error.message

    def refusal(self, now: float) -> StepCallError | None:
        """RESOURCE_EXHAUSTED for a new request while a forwarded step is known to have no room; else None."""
        for step, learned in list(self._limits.items()):
            room = learned.room(now, self.memory_s, self.through.get(step, 0))
            if room is None:  # forgotten
                del self._limits[step]
            elif room == 0:
                return StepCallError(step, "RESOURCE_EXHAUSTED", self._messages[step], relayed=True)
        return None
