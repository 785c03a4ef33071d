"""The gateway under overload and faults, over real gRPC: full steps refused at the entry, replicas dropped from
the endpoint list while calls are in flight, and a replica process stopped with SIGSTOP then resumed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from conveyor_runtime.errors import QueueFull, StepCallError
from conveyor_runtime.gateway import Balancer, PipelineExecutor, StaticEndpoints
from conveyor_runtime.protocol import decode_tensors, encode_tensors, pb, wire_tensors
from conveyor_runtime.serving import free_ports
from conveyor_runtime.spec import STEP_SPEC_ENV, ExecutionPlan
from tests.support.pipeline_fixtures import REPO, FakeStep, ListedEndpoints, eventually, manifest, start_fake_step


def _request(value: float = 0.0) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="s")
    encode_tensors(request, [("x", np.full(1, value, np.float32))])
    return request


def _add_one(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"y": arrays["x"] + 1}


async def test_executor_refuses_at_the_entry_while_a_later_step_is_full() -> None:
    def full(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise QueueFull("queue is full (4 of 4 rows queued); retry later")

    first = await start_fake_step(FakeStep("first", _add_one, [("x", "FP32")], [("y", "FP32")]))
    second = await start_fake_step(FakeStep("second", full, [("x", "FP32")], [("y", "FP32")]))
    plan = ExecutionPlan.from_manifest(manifest("two", [{"name": "first", "op": "identity"}, {"name": "second", "op": "identity"}]))
    balancers = {
        "first": Balancer("first", StaticEndpoints([first.address])),
        "second": Balancer("second", StaticEndpoints([second.address])),
    }
    executor = PipelineExecutor(plan, balancers)
    for balancer in balancers.values():
        await balancer.start()
        assert await balancer.wait_ready(10)
    try:
        for _ in range(3):
            with pytest.raises(StepCallError) as info:
                await executor.infer(wire_tensors(_request()), deadline=time.monotonic() + 30)
            assert info.value.status == "RESOURCE_EXHAUSTED" and info.value.step == "second"
        assert second.servicer.calls == 1
        assert first.servicer.calls == 1, "once `second` said it is full, no request is computed by `first` in vain"
        assert [b.pending for b in balancers.values()] == [0, 0], "refused and failed requests hold no reservation"
    finally:
        for balancer in balancers.values():
            await balancer.aclose()
        await first.stop()
        await second.stop()


async def test_balancer_lets_calls_on_a_dropped_replica_finish_then_closes_its_channel() -> None:
    release = asyncio.Event()

    async def held(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        await release.wait()
        return _add_one(arrays)

    old = await start_fake_step(FakeStep("s", held))
    new = await start_fake_step(FakeStep("s", _add_one))
    source = ListedEndpoints([old.address])
    balancer = Balancer("s", source)
    await balancer.start()
    try:
        assert await balancer.wait_ready(10)
        dropped = balancer.replicas[old.address]
        in_flight = asyncio.create_task(balancer.infer(_request(1.0), time.monotonic() + 30))
        await asyncio.wait_for(old.servicer.entered.wait(), 10)
        source.addresses = [new.address]  # the endpoint list drops `old` while it computes
        await eventually(lambda: list(balancer.replicas) == [new.address] and balancer.replicas[new.address].healthy,
                     what="the balancer follows the new list")
        answer = await balancer.infer(_request(5.0), time.monotonic() + 30)
        assert decode_tensors(answer)["y"].tolist() == [6.0] and new.servicer.calls == 1
        assert not in_flight.done()
        release.set()
        answer = await asyncio.wait_for(in_flight, 10)
        assert decode_tensors(answer)["y"].tolist() == [2.0], "the call in flight on the dropped replica finished"
        assert old.servicer.calls == 1, "and was not sent again"
        await eventually(lambda: dropped.channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN,
                     what="the dropped replica's channel is closed once its calls are done")
    finally:
        release.set()
        await balancer.aclose()
        await old.stop()
        await new.stop()


@contextlib.contextmanager
def _step_process(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`conveyor step` serving the identity op on 127.0.0.1:`port`, killed on exit (resumed first if stopped)."""
    env = {**os.environ, STEP_SPEC_ENV: json.dumps({"name": "s", "op": "identity"})}
    command = [sys.executable, "-m", "conveyor_runtime.cli", "--log-level", "WARNING", "step", "--host", "127.0.0.1",
               "--port", str(port), "--metrics-port", "0", "--grace", "0"]
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
        process.kill()
        _, stderr = process.communicate(timeout=30)
        if process.returncode not in (0, -signal.SIGKILL):
            print(stderr.decode(errors="replace"))


async def test_balancer_ejects_a_stopped_replica_sends_its_calls_elsewhere_and_takes_it_back() -> None:
    ports = free_ports(2)
    with _step_process(ports[0]) as stopped, _step_process(ports[1]):
        addresses = [f"127.0.0.1:{port}" for port in ports]
        balancer = Balancer("s", StaticEndpoints(addresses), stall_s=0.3, probe_timeout_s=0.5, retry_backoff_s=0.1)
        await balancer.start()
        try:
            await eventually(lambda: all(r.healthy for r in balancer.replicas.values()), 120, "both step processes serve")
            hung = balancer.replicas[addresses[0]]
            os.kill(stopped.pid, signal.SIGSTOP)
            answers = await asyncio.gather(
                *(balancer.infer(_request(float(i)), time.monotonic() + 20) for i in range(12))
            )
            assert [decode_tensors(a)["x"].tolist() for a in answers] == [[float(i)] for i in range(12)]
            assert hung.ejected and not hung.healthy, "the stopped replica is out of rotation"
            assert balancer.ready, "the other replica keeps the step ready"
            served = hung.served
            os.kill(stopped.pid, signal.SIGCONT)
            await eventually(lambda: hung.healthy, what="the resumed replica is back in rotation")
            for i in range(40):
                if hung.served > served:
                    break
                await balancer.infer(_request(float(i)), time.monotonic() + 20)
            assert hung.served > served, "the resumed replica gets calls again"
        finally:
            await balancer.aclose()
