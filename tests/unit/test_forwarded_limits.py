"""The gateway's limits for steps reached by forwarding: learned from relayed refusals, applied at the entry."""

from __future__ import annotations

from conveyor_runtime.errors import StepCallError
from conveyor_runtime.gateway.forwarded_limits import ForwardedLimits


def _full(step: str = "classify") -> StepCallError:
    return StepCallError(step, "RESOURCE_EXHAUSTED", f"step {step!r} queue is full (16 of 16 rows queued)", relayed=True)


def test_forwarded_limits_refuse_beyond_what_the_step_held_when_it_refused() -> None:
    limits = ForwardedLimits(memory_s=5.0)
    limits.enter(["classify", "post"])  # three requests on their way; the third is refused
    limits.enter(["classify", "post"])
    limits.enter(["classify", "post"])
    limits.learn_full(_full(), now=100.0)
    limits.leave(["classify", "post"])
    assert limits.through == {"classify": 2, "post": 2}
    refusal = limits.refusal(100.5)
    assert refusal is not None and refusal.step == "classify" and refusal.status == "RESOURCE_EXHAUSTED"
    assert refusal.message == "step 'classify' queue is full (16 of 16 rows queued)"  # its own words, unprefixed
    limits.leave(["classify", "post"])  # one of the two answered: there is room for one again
    assert limits.refusal(100.6) is None


def test_forwarded_limits_probe_once_after_the_memory_and_forget_after_twice_it() -> None:
    limits = ForwardedLimits(memory_s=5.0)
    limits.enter(["classify"])
    limits.learn_full(_full(), now=0.0)  # refused while holding none other: no room at all
    limits.leave(["classify"])
    assert limits.refusal(4.9) is not None
    assert limits.refusal(5.1) is None  # one request may find out whether there is room now
    limits.enter(["classify"])
    assert limits.refusal(5.2) is not None  # ... but only one
    assert limits.refusal(10.1) is None  # forgotten
    assert limits.refusal(10.2) is None
