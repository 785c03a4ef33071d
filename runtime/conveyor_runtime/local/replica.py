"""One local replica of a step: its fixed ports, its current process and its restart history."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .spawn import SpawnedProcess

__all__ = ["MAX_STARTUP_CRASHES", "ReplicaProcess", "RestartBackoff"]

#: Linux: what a replica runs first, in a short `python -S`: it asks for SIGTERM when its parent (the runner) dies,
#: even by SIGKILL, then execs the step's command in the same process. A preexec_fn would do the same, but it makes
#: Python fork() a process that has gRPC threads instead of spawning it (see local.spawn).
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
try:
    zero = ctypes.c_ulong(0)
    ctypes.CDLL(None, use_errno=True).prctl(1, ctypes.c_ulong(int(signal.SIGTERM)), zero, zero, zero)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""

#: A replica that crashes this many times before ever becoming ready fails `conveyor run`.
MAX_STARTUP_CRASHES = 3


@dataclass
class RestartBackoff:
    """How long to wait before restarting a replica that exited: doubling from `first_s` up to `max_s` while it
    keeps crashing, and back to `first_s` once a run lasted `stable_s` (crashes far apart are not a crash loop).

    Pure: the caller passes the times (any clock), so the policy is tested without waiting.
    """

    first_s: float = 0.5
    max_s: float = 15.0
    stable_s: float = 60.0
    #: Exits in a row, each after a run shorter than `stable_s`.
    streak: int = 0

    def __post_init__(self) -> None:
        if self.first_s <= 0:
            raise ValueError(f"first_s: must be > 0, got {self.first_s}")
        if self.max_s < self.first_s:
            raise ValueError(f"max_s: must be >= first_s ({self.first_s}), got {self.max_s}")
        if self.stable_s < 0:
            raise ValueError(f"stable_s: must be >= 0, got {self.stable_s}")

    def delay(self, *, started_at: float, exited_at: float) -> float:
        """Seconds to wait before restarting a replica that ran from `started_at` to `exited_at`."""
        if exited_at - started_at >= self.stable_s:
            self.streak = 0
        self.streak += 1
        return float(min(self.first_s * 2.0 ** min(self.streak - 1, 30), self.max_s))


@dataclass(eq=False)
class ReplicaProcess:
    """One replica of one step: its fixed ports and its current process (replaced on restart)."""

    step: str
    index: int
    port: int
    metrics_port: int
    process: SpawnedProcess | None = None
    restarts: int = 0
    backoff: RestartBackoff = field(default_factory=RestartBackoff)
    crashes_before_ready: int = 0
    ever_ready: bool = False
    started_at: float = 0.0
    tail: list[str] = field(default_factory=list)
    provider: str = ""
    #: the replica addresses of the steps it may forward its outputs to (see `conveyor step --peer`)
    peers: dict[str, list[str]] = field(default_factory=dict)
    #: set when it serves the gateway too (`local.gateway_host`): the gateway's gRPC, HTTP and metrics ports
    gateway_ports: tuple[int, int | None, int | None] | None = None
    #: with `gateway_ports`: the replica addresses of the steps its gateway calls in other processes
    endpoints: dict[str, list[str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.step}-{self.index}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self, manifest_path: Path, log_level: str) -> list[str]:
        """`conveyor step` for this replica, on its ports, in the same Python (on Linux: ended if this process dies);
        with `gateway_ports`, the step and the gateway in one process (`local.gateway_host`)."""
        step = [sys.executable, "-m", "conveyor_runtime.cli", "--log-level", log_level, "step"]
        if self.gateway_ports is not None:
            grpc_port, http_port, metrics_port = self.gateway_ports
            step = [sys.executable, "-m", "conveyor_runtime.local.gateway_host", "--log-level", log_level]
            step += ["--gateway-grpc-port", str(grpc_port)]
            step += ["--gateway-http-port", str(-1 if http_port is None else http_port)]
            step += ["--gateway-metrics-port", str(-1 if metrics_port is None else metrics_port)]
            for name, addresses in self.endpoints.items():
                step += ["--endpoint", f"{name}={','.join(addresses)}"]
        step += [
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
        if self.gateway_ports is None:
            # the runner stops the gateway before any replica: nothing routes to a replica once it is signalled
            step += ["--pre-stop-delay", "0"]
        for peer, addresses in self.peers.items():
            step += ["--peer", f"{peer}={','.join(addresses)}"]
        if sys.platform.startswith("linux"):
            return [sys.executable, "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *step]
        return step
