"""The protocol floor of `conveyor bench pipeline --floor`: the CPU that serving a load over gRPC costs when the server
computes nothing (`null_server`), the server's and the load generator's apart.

A pipeline's saturation is quoted as a share of the in-process limit, where no request is received or answered at
all; the floor says how much of the distance any gRPC server on these cores pays, measured with the same requests,
answer, concurrency and rate as the pipeline's busiest level.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

from conveyor_runtime.protocol import pb

from .cpu import cpu_seconds
from .load import closed_loop_calls, grpc_call, open_stubs

__all__ = ["Floor", "measure_floor", "null_server"]

_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Floor:
    """What one closed-loop level against the null server cost: requests answered in `seconds`, CPU seconds spent."""

    concurrency: int
    delay_ms: float
    requests: int
    seconds: float
    server_cpu_s: float
    client_cpu_s: float

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def server_ms_per_request(self) -> float:
        return 1000.0 * self.server_cpu_s / self.requests if self.requests else float("nan")

    @property
    def client_ms_per_request(self) -> float:
        return 1000.0 * self.client_cpu_s / self.requests if self.requests else float("nan")


@contextlib.contextmanager
def null_server(answer: pb.ModelInferResponse, delay_s: float) -> Iterator[tuple[str, int]]:
    """A `null_server` process answering `answer` after `delay_s`: yields its address and pid, stops it afterwards."""
    with tempfile.TemporaryDirectory(prefix="conveyor-floor-") as workdir:
        answer_file, log_file = Path(workdir) / "answer.pb", Path(workdir) / "stderr.log"
        answer_file.write_bytes(answer.SerializeToString())
        with log_file.open("wb") as log:
            command = [sys.executable, "-m", "conveyor_benchmarks.null_server", "--answer", str(answer_file)]
            command += ["--delay-ms", f"{1000.0 * delay_s:.3f}"]
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
        try:
            assert process.stdout is not None
            line = _first_line(process.stdout.readline)
            if not line.startswith("port "):
                raise RuntimeError(
                    f"the null server did not start (exit {process.poll()}): {log_file.read_text(errors='replace')[-2000:]}"
                )
            yield f"127.0.0.1:{int(line.split()[1])}", process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def _first_line(readline: Callable[[], bytes]) -> str:
    """The first line the server prints, or "" if it prints none within the start timeout."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(readline).result(timeout=_START_TIMEOUT_S).decode(errors="replace").strip()
    except FutureTimeout:
        return ""
    finally:
        pool.shutdown(wait=False)  # a readline still blocked ends when the server is stopped


async def _load(
    address: str,
    server_pid: int,
    make_request: Callable[[int], pb.ModelInferRequest],
    *,
    concurrency: int,
    delay_s: float,
    duration_s: float,
    warmup_s: float,
    timeout_s: float,
) -> Floor:
    answered = [0]
    failures: dict[str, int] = {}
    async with open_stubs(address, channels=2) as stubs:
        call = grpc_call(stubs, make_request, timeout_s)

        async def counted(n: int) -> str | None:
            failure = await call(n)
            if failure is None:
                answered[0] += 1
            else:
                failures[failure] = failures.get(failure, 0) + 1
            return failure

        if warmup_s > 0:
            await closed_loop_calls(counted, concurrency=concurrency, duration_s=warmup_s)
        answered[0] = 0
        server_before, client_before, began = cpu_seconds(server_pid), time.process_time(), time.monotonic()
        # every call of the level, also those answered after its end, falls inside the CPU window and is counted
        await closed_loop_calls(counted, concurrency=concurrency, duration_s=duration_s)
        seconds = time.monotonic() - began
        server_cpu, client_cpu = cpu_seconds(server_pid) - server_before, time.process_time() - client_before
    if failures:
        raise RuntimeError(f"the null server failed requests: {failures}")
    return Floor(concurrency, 1000.0 * delay_s, answered[0], seconds, server_cpu, client_cpu)


def measure_floor(
    answer: pb.ModelInferResponse,
    make_request: Callable[[int], pb.ModelInferRequest],
    *,
    concurrency: int,
    delay_s: float,
    duration_s: float,
    warmup_s: float = 1.0,
    timeout_s: float = 60.0,
) -> Floor:
    """`concurrency` clients send `make_request(n)` to a null server that answers `answer` after `delay_s` (so that the
    level runs at about concurrency / delay_s requests/s, the rate to compare with); CPU per request of both sides."""
    with null_server(answer, delay_s) as (address, pid):
        return asyncio.run(
            _load(
                address, pid, make_request,
                concurrency=concurrency, delay_s=delay_s, duration_s=duration_s, warmup_s=warmup_s, timeout_s=timeout_s,
            )
        )
