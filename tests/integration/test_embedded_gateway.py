"""A gateway embedded in a step's process (`conveyor run --gateway embedded`): the steps served there are called in
memory (`InProcessStepClient`), the others over real gRPC.

What is checked: answers equal those of a gateway of its own; the steps in the process get no gRPC call from the
gateway; a failure keeps its status and its step's words, whether the step runs in the process, behind it in
memory, or in another process reached by forwarding, and other requests carry on; a deadline holds for an in-memory
call; `conveyor run --gateway embedded` serves from the entry replica's process (its port belongs to that process),
over gRPC and HTTP, stops it first on Ctrl-C while a request is in flight, and refuses an entry step with 2 replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest
import yaml

from conveyor_runtime.errors import StepCallError
from conveyor_runtime.gateway import Gateway, StaticEndpoints
from conveyor_runtime.protocol import InferenceStub, decode_tensors, encode_tensors, pb
from conveyor_runtime.step import InProcessStepClient, StepServer, create_step_server, peer_sources
from tests.support.pipeline_fixtures import REPO, RUN_TEST_OPS, manifest, start_run
from tests.support.step_fixtures import step_spec

ADD = "tests.support.step_fixtures:AddOp"
SLOW = "tests.support.step_fixtures:SlowOp"


def _add(name: str, add: float, *, input: str = "x", output: str = "y", **config: Any) -> dict[str, Any]:
    return {"name": name, "op": ADD, "config": {"add": add, "input": input, "output": output, **config}}


A = _add("a", 1, reject_above=5000)
B = _add("b", 10, input="y", reject_above=2000)
C = _add("c", 100, input="y", output="out", reject_above=1000)


def _spec(step: Mapping[str, Any]) -> Any:
    return step_spec(step["name"], **{k: v for k, v in step.items() if k != "name"})


@contextlib.asynccontextmanager
async def _embedded(
    host: Mapping[str, Any], guests: Sequence[Mapping[str, Any]], elsewhere: Sequence[Mapping[str, Any]]
) -> AsyncIterator[tuple[Gateway, StepServer, dict[str, StepServer]]]:
    """`host` serving `guests` and a gateway over a -> b -> c in the same process; `elsewhere` in servers of their own
    (the host's peers and the gateway's endpoints)."""
    others: dict[str, StepServer] = {}
    server: StepServer | None = None
    gateway: Gateway | None = None
    try:
        for step in elsewhere:
            others[step["name"]] = create_step_server(_spec(step))
            await others[step["name"]].start()
        addresses = {name: [f"127.0.0.1:{s.port}"] for name, s in others.items()}
        server = create_step_server(_spec(host), in_process=[_spec(g) for g in guests], peers=peer_sources(addresses))
        await server.start()
        clients = {name: InProcessStepClient(server.servicer, name) for name in server.servicer.model_names}
        m = manifest("emb", [{"name": name, "op": "identity"} for name in ("a", "b", "c")])
        sources = {name: StaticEndpoints(a) for name, a in addresses.items()}
        gateway = Gateway(m, sources, in_process=clients, host="127.0.0.1", grpc_port=0, http_port=None)
        await gateway.start()
        assert await gateway.wait_ready(10)
        yield gateway, server, others
    finally:
        if gateway is not None:
            await gateway.stop(0)
        if server is not None:
            await server.stop(grace=2.0)
        for other in others.values():
            await other.stop(grace=2.0)


async def _infer(gateway: Gateway, x: np.ndarray, timeout: float = 10) -> dict[str, np.ndarray]:
    request = pb.ModelInferRequest(model_name="emb", id="r")
    encode_tensors(request, [("x", x)])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        return decode_tensors(await InferenceStub(channel).ModelInfer(request, timeout=timeout))


def _count(server: StepServer, name: str, labels: dict[str, str]) -> float:
    return server.metrics.registry.get_sample_value(name, labels) or 0.0


def _served(gateway: Gateway) -> dict[str, int]:
    return {name: sum(r["served"] for r in client.snapshot()) for name, client in gateway.balancers.items()}


async def test_the_embedded_gateway_calls_the_steps_of_its_process_in_memory_and_the_others_over_grpc() -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    async with _embedded(A, [B], [C]) as (gateway, server, others):
        assert isinstance(gateway.balancers["a"], InProcessStepClient)
        assert not isinstance(gateway.balancers["c"], InProcessStepClient)
        results = await asyncio.gather(*(_infer(gateway, x + i) for i in range(5)))
        assert _served(gateway) == {"a": 5, "b": 0, "c": 0}, "one in-memory call per request, forwarded from there"
        assert _count(server, "conveyor_step_requests_total", {"step": "b", "code": "OK"}) == 5
        assert _count(server, "conveyor_step_forwarded_total", {"step": "b", "to": "c", "code": "OK"}) == 5
        assert _count(others["c"], "conveyor_step_requests_total", {"step": "c", "code": "OK"}) == 5
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["out"], x + i + 111)


@pytest.mark.parametrize(
    ("value", "step", "limit"),
    [(6000.0, "a", 5000), (3000.0, "b", 2000), (1500.0, "c", 1000)],
    ids=["the-called-step", "a-step-behind-it-in-memory", "a-step-in-another-process"],
)
async def test_a_failure_keeps_its_status_and_its_steps_words_and_fails_alone(value: float, step: str, limit: int) -> None:
    async with _embedded(A, [B], [C]) as (gateway, server, _):
        good = [asyncio.create_task(_infer(gateway, np.full((1, 2), float(i), np.float32))) for i in range(6)]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _infer(gateway, np.full((1, 2), value, np.float32))
        results = await asyncio.gather(*good)
        assert _count(server, "conveyor_step_requests_total", {"step": "a", "code": "OK"}) == 6 + (step != "a"), "not retried"
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == f"step '{step}': [TOO_LARGE] values above {limit}"
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["out"], np.full((1, 2), i + 111.0))


async def test_an_in_memory_call_ends_at_its_deadline_with_the_steps_name(tmp_path: Path) -> None:
    server = create_step_server(step_spec("slow", op=SLOW, config={"marker": str(tmp_path / "m"), "delay": 2.0}))
    await server.start()
    try:
        client = InProcessStepClient(server.servicer, "slow")
        request = pb.ModelInferRequest(model_name="slow")
        encode_tensors(request, [("x", np.ones((1, 2), np.float32))])
        started = time.monotonic()
        with pytest.raises(StepCallError) as info:
            await client.infer(request, time.monotonic() + 0.3)
        assert time.monotonic() - started < 1.5
        assert info.value.status == "DEADLINE_EXCEEDED" and info.value.step == "slow"
        assert client.ready and (await client.metadata()) is not None
        with pytest.raises(ValueError, match="not served in this process"):
            InProcessStepClient(server.servicer, "other")
    finally:
        await server.stop(grace=5.0)


# --- conveyor run --gateway embedded -------------------------------------------------------------------------------

def _pipeline(tmp_path: Path, steps: list[dict[str, Any]]) -> Path:
    (tmp_path / "testops.py").write_text(RUN_TEST_OPS)
    path = tmp_path / "pipeline.yaml"
    document = {"apiVersion": "conveyor.dev/v1alpha1", "kind": "InferencePipeline", "metadata": {"name": "emb"}}
    path.write_text(yaml.safe_dump({**document, "spec": {"steps": steps}}))
    return path


def _listening_pid(port: int, pids: Sequence[int]) -> int | None:
    """Which of `pids` holds the socket listening on `port` (from /proc/net/tcp[6] and each one's fds; gRPC listens on
    an IPv6 socket that takes IPv4 too where it can)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(inode)
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd).removeprefix("socket:[").removesuffix("]") in inodes:
                    return pid
    return None


def _infer_sync(address: str, data: np.ndarray) -> np.ndarray:
    import tritonclient.grpc as tgrpc

    client = tgrpc.InferenceServerClient(address)
    try:
        tensor = tgrpc.InferInput("x", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        answer = client.infer("emb", [tensor], client_timeout=120).as_numpy("x")
        assert answer is not None
        return np.asarray(answer)
    finally:
        client.close()


def test_conveyor_run_serves_the_gateway_from_the_entry_replicas_process(tmp_path: Path) -> None:
    steps: list[dict[str, Any]] = [
        {"name": "pre", "op": "identity", "inProcessWith": "mid"},
        {"name": "mid", "op": "identity"},
        {"name": "post", "op": "identity", "replicas": 2},
    ]
    run = start_run(_pipeline(tmp_path, steps), tmp_path, "--gateway", "embedded")
    try:
        host_pid = run.addresses["steps"]["mid"][0]["pid"]
        assert run.addresses["gatewayIn"] == "mid"
        port = int(run.grpc.rsplit(":", 1)[1])
        assert _listening_pid(port, [run.process.pid, host_pid]) == host_pid
        data = np.arange(6, dtype=np.float32).reshape(3, 2)
        np.testing.assert_array_equal(_infer_sync(run.grpc, data), data)
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, 2.5]}]}).encode()
        request = urllib.request.Request(f"http://{run.http}/v2/models/emb/infer", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=30) as page:
            assert json.loads(page.read())["outputs"][0]["data"] == [1.5, 2.5]
        assert "gateway in mid's process" in run.log()
    finally:
        assert run.stop() == 0, run.log()[-4000:]


def test_conveyor_run_embedded_stops_the_gateways_replica_first_and_finishes_in_flight_requests(tmp_path: Path) -> None:
    steps: list[dict[str, Any]] = [
        {"name": "hold", "op": "testops:Hold", "config": {"dir": str(tmp_path)}},
        {"name": "echo", "op": "identity"},
    ]
    run = start_run(_pipeline(tmp_path, steps), tmp_path, "--gateway", "embedded", "--grace", "60")
    data = np.arange(4, dtype=np.float32).reshape(1, 4)
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(_infer_sync, run.grpc, data)
            end = time.monotonic() + 60
            while not (tmp_path / "entered").exists():
                assert time.monotonic() < end, run.log()[-4000:]
                time.sleep(0.05)
            os.killpg(run.process.pid, signal.SIGINT)
            while "stopping the gateway and its step replica" not in run.log():
                assert time.monotonic() < end, run.log()[-4000:]
                time.sleep(0.05)
            (tmp_path / "release").touch()
            np.testing.assert_array_equal(answer.result(120), data)
        assert run.process.wait(120) == 0, run.log()[-4000:]
    finally:
        run.stop()
    log = run.log()
    assert log.index("stopping the gateway and its step replica") < log.index("gateway stopped; stopping 1 step replica(s)")


def test_conveyor_run_embedded_refuses_an_entry_step_with_two_replicas(tmp_path: Path) -> None:
    path = _pipeline(tmp_path, [{"name": "a", "op": "identity", "replicas": 2}])
    command = [sys.executable, "-m", "conveyor_runtime.cli", "run", str(path), "--gateway", "embedded"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 1
    assert "step 'a', the pipeline's entry, so that step needs 1 replica (it has 2)" in done.stderr
    assert "pass --replicas a=1 or --gateway separate" in done.stderr
