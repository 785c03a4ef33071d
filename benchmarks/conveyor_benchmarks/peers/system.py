"""What the bench needs of each system under test: start, the pids whose CPU counts, one checked answer, a closed
loop at C clients, an open loop at a rate, and a clean stop."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import numpy.typing as npt

from ..load import Call, LoadResult, closed_loop_calls, open_loop_calls
from .plan import PeerPlan
from .server_process import ServerProcess

__all__ = ["OPEN_LOOP_CONNECTIONS", "ServedSystem", "System"]

#: Connections a client may open under an open loop: enough that no request waits for one at the rates measured.
OPEN_LOOP_CONNECTIONS = 256


class System(abc.ABC):
    """One serving system running the plan's pipeline; `start` once, measure many levels, `stop` always."""

    #: The name in --systems and in the table.
    name: str = ""

    def __init__(self, plan: PeerPlan, payloads: list[npt.NDArray[Any]], rows: int) -> None:
        self.plan = plan
        self.payloads = payloads
        self.rows = rows
        #: How it was configured and started, for the report (filled by `start`).
        self.description = ""

    @abc.abstractmethod
    def start(self, workdir: Path) -> None:
        """Start it and wait until it answers."""

    @abc.abstractmethod
    def pids(self) -> list[int]:
        """Root processes of the system: their whole process trees count as its serving CPU."""

    @abc.abstractmethod
    async def labels(self, payload: npt.NDArray[Any]) -> list[list[str]]:
        """The top-k labels of one request (compared across systems)."""

    @abc.abstractmethod
    async def closed_loop(self, concurrency: int, duration_s: float, warmup_s: float) -> LoadResult:
        """`concurrency` clients sending `payloads` in turn, as `load.closed_loop` does."""

    @abc.abstractmethod
    async def open_loop(self, rate: float, duration_s: float, warmup_s: float) -> LoadResult:
        """Requests sent at `rate` per second whatever the answers, as `load.open_loop` does."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop it and everything it started (safe to call twice, and after a failed `start`)."""


class ServedSystem(System):
    """A peer served by one server process (`self.server`) and driven through an async call per request (`calls`)."""

    def __init__(self, plan: PeerPlan, payloads: list[npt.NDArray[Any]], rows: int) -> None:
        super().__init__(plan, payloads, rows)
        self.server: ServerProcess | None = None

    @abc.abstractmethod
    def calls(self, connections: int) -> AbstractAsyncContextManager[Callable[[int], Awaitable[None]]]:
        """`call(n)`: send the n-th payload through the pipeline, over at most `connections` connections."""

    def pids(self) -> list[int]:
        return [] if self.server is None else [self.server.process.pid]

    async def closed_loop(self, concurrency: int, duration_s: float, warmup_s: float) -> LoadResult:
        async with self.calls(concurrency) as call:
            return await closed_loop_calls(
                _failure_named(call),
                concurrency=concurrency,
                duration_s=duration_s,
                warmup_s=warmup_s,
                rows_per_request=self.rows,
            )

    async def open_loop(self, rate: float, duration_s: float, warmup_s: float) -> LoadResult:
        async with self.calls(OPEN_LOOP_CONNECTIONS) as call:
            return await open_loop_calls(
                _failure_named(call), rate=rate, duration_s=duration_s, warmup_s=warmup_s, rows_per_request=self.rows
            )

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def _failure_named(call: Callable[[int], Awaitable[None]]) -> Call:
    """`call`, with a raised failure counted under its exception's type (any client or server failure is an error of
    the level, not of the bench)."""

    async def counted(n: int) -> str | None:
        try:
            await call(n)
        except Exception as exc:
            return type(exc).__name__
        return None

    return counted
