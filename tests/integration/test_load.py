"""The e2e load generator records every outcome: answers from a live server, then UNAVAILABLE once it is gone."""

from __future__ import annotations

import asyncio

import numpy as np

from conveyor_runtime.spec import StepSpec
from conveyor_runtime.step import create_step_server
from tests.support.load import Load, echo_check

INPUTS = {"x": np.arange(4, dtype=np.float32).reshape(1, 4)}


async def test_load_records_answers_then_unavailable_after_the_server_stops() -> None:
    server = create_step_server(StepSpec(name="echo", op="identity"))
    await server.start()
    load = Load(f"127.0.0.1:{server.port}", "echo", INPUTS, rate=50, timeout_s=2, check=echo_check(INPUTS)).start()
    try:
        while load.counts()["OK"] < 10:
            await _tick()
    finally:
        await server.stop(0)
    stopped = load.now()
    while not load.failures(since=stopped):
        await _tick()
    load.stop()
    served = load.outcomes(until=stopped)
    assert served and all(o.ok for o in served[:10]), load.summary()
    assert {o.code for o in load.failures(since=stopped + 1)} <= {"UNAVAILABLE"}, load.summary()
    assert sum(c.total() for _, c in load.per_second()) == len(load.outcomes())


def test_load_flags_a_wrong_answer() -> None:
    check = echo_check(INPUTS)
    assert check({"y": INPUTS["x"]}) is None
    assert "expected the input echoed" in (check({"y": INPUTS["x"] + 1}) or "")


async def _tick() -> None:
    await asyncio.sleep(0.05)
