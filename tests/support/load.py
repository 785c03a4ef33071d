"""Steady background load against a gateway (or any Open Inference Protocol server), every outcome recorded.

``with Load(address, model, inputs, rate=40) as load: ...`` sends `rate` requests per second from a thread of its
own (open loop: a slow answer never slows the sending, up to `max_in_flight`), checks each answer, and records
every outcome: the gRPC code, the server's words, the latency and when it was sent. Tests then assert
"0 failed requests" over an interval (`load.failures(since, until)`), or read per-second counts around an event.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc
import grpc.aio
import numpy as np

from conveyor_runtime.protocol import InferenceStub, decode_tensors, encode_tensors, pb

__all__ = ["Load", "Outcome", "echo_check"]

#: An answer checker: None when the answer is right, else what is wrong with it.
Check = Callable[[Mapping[str, np.ndarray]], str | None]


@dataclass(frozen=True)
class Outcome:
    """One request: sent `at` seconds after the load started; `code` "OK", a gRPC code name, or "WRONG_ANSWER"."""

    at: float
    code: str
    detail: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    def __str__(self) -> str:
        return f"t={self.at:.2f}s {self.code} after {self.seconds * 1000:.0f} ms: {self.detail}"


def echo_check(inputs: Mapping[str, np.ndarray]) -> Check:
    """For pipelines of `identity` steps: every output equals the one input, whatever it is named."""
    (expected,) = inputs.values()

    def check(outputs: Mapping[str, np.ndarray]) -> str | None:
        if len(outputs) != 1 or not np.array_equal(next(iter(outputs.values())), expected):
            return f"expected the input echoed, got {dict(outputs)!r}"[:300]
        return None

    return check


class Load:
    """Background gRPC clients at a steady rate; see the module docstring. Not reusable: start once, stop once."""

    def __init__(
        self,
        address: str,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        rate: float = 40.0,
        timeout_s: float = 10.0,
        max_in_flight: int = 64,
        check: Check | None = None,
        reconnect_backoff_s: float | None = None,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0 requests per second, got {rate}")
        self.address = address
        self.model = model
        self.inputs = dict(inputs)
        self.rate = rate
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.check = check
        # gRPC waits up to 120 s between reconnects by default; a test that asks "when does the client see the
        # server again" caps it (a client's own choice, like any other channel option)
        self.options: list[tuple[str, int]] = []
        if reconnect_backoff_s is not None:
            millis = int(reconnect_backoff_s * 1000)
            self.options = [("grpc.initial_reconnect_backoff_ms", millis), ("grpc.max_reconnect_backoff_ms", millis),
                            ("grpc.min_reconnect_backoff_ms", millis)]
        self.skipped = 0  # sends skipped because max_in_flight requests were still unanswered
        self._outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._started_at = 0.0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._running = threading.Event()

    # --- life ---
    def start(self) -> Load:
        self._thread = threading.Thread(target=self._main, name=f"load {self.address}", daemon=True)
        self._thread.start()
        self._running.wait(10)
        return self

    def stop(self) -> Load:
        """Stop sending and wait (up to the request timeout) for the answers still due."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(self.timeout_s + 10)
        if self._error is not None:
            raise RuntimeError(f"the load generator failed: {self._error!r}") from self._error
        return self

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- reading ---
    def now(self) -> float:
        """Seconds since the load started, on the clock of `Outcome.at` (to mark an event)."""
        return time.monotonic() - self._started_at

    def outcomes(self, since: float = 0.0, until: float = float("inf")) -> list[Outcome]:
        with self._lock:
            return [o for o in self._outcomes if since <= o.at < until]

    def failures(self, since: float = 0.0, until: float = float("inf")) -> list[Outcome]:
        return [o for o in self.outcomes(since, until) if not o.ok]

    def counts(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        return Counter(o.code for o in self.outcomes(since, until))

    def per_second(self) -> list[tuple[int, Counter[str]]]:
        """(second, counts by code) for each second of the run."""
        seconds: dict[int, Counter[str]] = {}
        for outcome in self.outcomes():
            seconds.setdefault(int(outcome.at), Counter())[outcome.code] += 1
        return sorted(seconds.items())

    def summary(self, since: float = 0.0, until: float = float("inf"), examples: int = 5) -> str:
        """Counts by code, then the first few failures (for assertion messages and figures)."""
        counts = self.counts(since, until)
        failures = self.failures(since, until)
        text = ", ".join(f"{code} {n}" for code, n in counts.most_common()) or "no requests"
        if self.skipped:
            text += f"; {self.skipped} sends skipped (max_in_flight reached)"
        return text + "".join(f"\n  {failure}" for failure in failures[:examples])

    # --- the thread ---
    def _main(self) -> None:
        try:
            asyncio.run(self._send_steadily())
        except BaseException as exc:  # reported by stop()
            self._error = exc
            self._running.set()

    async def _send_steadily(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        request = pb.ModelInferRequest(model_name=self.model)
        encode_tensors(request, self.inputs.items())
        in_flight: set[asyncio.Task[None]] = set()
        async with grpc.aio.insecure_channel(self.address, options=self.options) as channel:
            stub = InferenceStub(channel)
            self._started_at = time.monotonic()
            self._running.set()
            sent = 0
            while not self._stop.is_set():
                if len(in_flight) >= self.max_in_flight:
                    self.skipped += 1
                else:
                    task = asyncio.create_task(self._one(stub, request, self.now()))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                sent += 1
                delay = self._started_at + sent / self.rate - time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.wait_for(self._stop.wait(), delay)
                    except TimeoutError:
                        pass
            if in_flight:
                await asyncio.wait(in_flight)

    async def _one(self, stub: InferenceStub, request: pb.ModelInferRequest, at: float) -> None:
        started = time.monotonic()
        try:
            response = await stub.ModelInfer(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            code, detail = exc.code().name, exc.details() or ""
        else:
            wrong = self.check(decode_tensors(response)) if self.check is not None else None
            code, detail = ("WRONG_ANSWER", wrong) if wrong else ("OK", "")
        outcome = Outcome(at=at, code=code, detail=detail, seconds=time.monotonic() - started)
        with self._lock:
            self._outcomes.append(outcome)

