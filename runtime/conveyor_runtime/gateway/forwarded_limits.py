"""What the gateway knows about the fullness of steps it does not call itself: those a request reaches by forwarding.

The gateway refuses a request at the entry while a step it calls is known to be full (`Balancer.saturated`), so that
a refusal costs no step any work. A step reached by forwarding answers only through the step before it, so its
"queue full" arrives relayed; this keeps, per such step, how many of this gateway's requests were on their way
through it when it refused, and the executor refuses new requests at the entry beyond that number, the same rule
a `Replica` applies to its own calls (see `Replica.room`): within `memory_s` nothing beyond the learned number,
then one more to find out whether there is room again, and after twice `memory_s` the number is forgotten.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import StepCallError

__all__ = ["ForwardedLimits"]


@dataclass
class _Limit:
    limit: int
    at: float
    message: str


class ForwardedLimits:
    """Requests in flight through each forwarded step, and the limits learned from their relayed refusals."""

    def __init__(self, memory_s: float = 5.0) -> None:
        self.memory_s = memory_s
        self.through: dict[str, int] = {}
        self._limits: dict[str, _Limit] = {}

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
        holding = max(0, self.through.get(error.step, 0) - 1)
        self._limits[error.step] = _Limit(holding, now, error.message)

    def refusal(self, now: float) -> StepCallError | None:
        """RESOURCE_EXHAUSTED for a new request while a forwarded step is known to have no room; else None."""
        for step, known in list(self._limits.items()):
            age = now - known.at
            if age > 2 * self.memory_s:
                del self._limits[step]
                continue
            room = known.limit + (1 if age > self.memory_s else 0) - self.through.get(step, 0)
            if room <= 0:
                return StepCallError(step, "RESOURCE_EXHAUSTED", known.message, relayed=True)
        return None
