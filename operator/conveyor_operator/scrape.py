"""Read a step pod's `/metrics` page once per step it serves: the pods of a host step also serve the series of the
steps that run in their processes (`inProcessWith`), each labelled with that step's name.
"""

from __future__ import annotations

from collections.abc import Sequence

from conveyor_runtime.live import PodSample, parse_metrics

__all__ = ["step_samples"]

def step_samples(text: str, own: str, guests: Sequence[str] = ()) -> dict[str, PodSample]:
    """A step pod's page as the sample of each step it serves: its `own` and each of its `guests`, each from the
    series labelled with its name (`parse_metrics`); series of any other step (a guest that left, while the pod
    still runs it) count for none. Raises ValueError for a page that cannot be parsed."""
    return {step: parse_metrics(text, step) for step in (own, *guests)}
