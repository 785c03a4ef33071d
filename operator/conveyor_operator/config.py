"""The operator's settings: flags of `conveyor operator`, with environment variables as defaults (for the chart)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from conveyor_runtime.errors import UsageError

from .labels import DEFAULT_IMAGE

__all__ = ["OperatorConfig"]


@dataclass(frozen=True)
class OperatorConfig:
    """What the operator needs beyond the cluster: pods' default image, reconcile period, watched namespaces."""

    image: str = DEFAULT_IMAGE
    #: Seconds between resyncs of every pipeline: the backstop behind the watches, and the retry of refused children.
    reconcile_interval: float = 15.0
    #: Namespaces to watch; empty means all (cluster-wide).
    namespaces: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.image:
            raise UsageError("image must not be empty; set CONVEYOR_IMAGE or --image")
        if not 0.1 <= self.reconcile_interval <= 3600:
            raise UsageError(f"reconcile interval must be within 0.1..3600 seconds, got {self.reconcile_interval}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        """CONVEYOR_IMAGE, CONVEYOR_RECONCILE_INTERVAL and CONVEYOR_WATCH_NAMESPACES (comma-separated)."""
        env = os.environ if environ is None else environ
        raw_interval = env.get("CONVEYOR_RECONCILE_INTERVAL", "") or "15"
        try:
            interval = float(raw_interval)
        except ValueError:
            raise UsageError(f"CONVEYOR_RECONCILE_INTERVAL must be a number of seconds, got {raw_interval!r}") from None
        namespaces = tuple(ns.strip() for ns in env.get("CONVEYOR_WATCH_NAMESPACES", "").split(",") if ns.strip())
        return cls(image=env.get("CONVEYOR_IMAGE", "") or DEFAULT_IMAGE, reconcile_interval=interval, namespaces=namespaces)
