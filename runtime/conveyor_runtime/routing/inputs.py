"""The input names of the steps a caller routes tensors to, read from their metadata and cached per replica set."""

from __future__ import annotations

import time

from .step_client import StepClient

__all__ = ["InputNames"]

#: The longest a call waits for a step's metadata (within its deadline).
METADATA_TIMEOUT_S = 5.0


class InputNames:
    """Each step's input names (None while unknown), read again whenever its replica set changes (a rollout may
    have renamed them; see `Balancer.metadata_epoch`)."""

    def __init__(self) -> None:
        # per step: (the balancer's metadata_epoch it was read at, the step's input names)
        self._known: dict[str, tuple[int, list[str] | None]] = {}

    async def of(self, balancer: StepClient, deadline: float | None) -> list[str] | None:
        """`balancer`'s step's input names; None when its metadata cannot be had before `deadline` (or in 5 s)."""
        epoch = balancer.metadata_epoch
        known = self._known.get(balancer.step)
        if known is not None and known[0] == epoch:
            return known[1]
        timeout = METADATA_TIMEOUT_S if deadline is None else min(METADATA_TIMEOUT_S, deadline - time.monotonic())
        meta = await balancer.metadata(timeout) if timeout > 0 else None
        names = [t.name for t in meta.inputs] if meta is not None and meta.inputs else None
        if meta is not None:
            self._known[balancer.step] = (epoch, names)
        return names
