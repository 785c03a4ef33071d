"""One local replica of a step: its fixed ports, its current process and its restart history."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MAX_STARTUP_CRASHES", "RESTART_BACKOFF_S", "ReplicaProcess", "restart_delay"]

#: Restart back-off after a replica crashes: doubles from the first value up to the second.
RESTART_BACKOFF_S = (0.5, 15.0)
#: A replica that crashes this many times before ever becoming ready fails `conveyor run`.
MAX_STARTUP_CRASHES = 3


def restart_delay(restarts: int) -> float:
    """Seconds to wait before restart number `restarts` (1, 2, ...)."""
    return float(min(RESTART_BACKOFF_S[0] * 2.0 ** min(restarts - 1, 10), RESTART_BACKOFF_S[1]))


@dataclass(eq=False)
class ReplicaProcess:
    """One replica of one step: its fixed ports and its current process (replaced on restart)."""

    step: str
    index: int
    port: int
    metrics_port: int
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    crashes_before_ready: int = 0
    ever_ready: bool = False
    started_at: float = 0.0
    tail: list[str] = field(default_factory=list)
    provider: str = ""

    @property
    def name(self) -> str:
        return f"{self.step}-{self.index}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self, manifest_path: Path, log_level: str) -> list[str]:
        """`conveyor step` for this replica, on its ports, in the same Python."""
        return [
            sys.executable,
            "-m",
            "conveyor_runtime.cli",
            "--log-level",
            log_level,
            "step",
            "--manifest",
            str(manifest_path),
            "--step",
            self.step,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
        ]
