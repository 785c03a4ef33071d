"""In-process edges over real gRPC: a step server that also serves the steps `inProcessWith` it, behind a real gateway,
and `conveyor run` starting one process for the three steps of a pipeline.

What is checked: the gateway makes one call per request and the steps in the host's process hand tensors over in
memory (no gRPC forwarding), each step still counted in its own series; answers equal those of separate processes;
a guest's failure reaches its client alone, in its own words, unretried; each hosted step is a model of its own
(metadata, readiness); a route goes on from the host to a step elsewhere; `conveyor step --step <guest>` says to
serve the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest
import yaml

from conveyor_runtime.cli.step import load_step_spec
from conveyor_runtime.errors import UsageError
from conveyor_runtime.gateway import Gateway, create_gateway
from conveyor_runtime.protocol import InferenceStub, decode_tensors, encode_tensors, pb
from conveyor_runtime.step import StepServer, create_step_server, peer_sources
from tests.support.pipeline_fixtures import manifest, start_run
from tests.support.step_fixtures import step_spec

ADD = "tests.support.step_fixtures:AddOp"


def _add(name: str, add: float, *, input: str = "x", output: str = "y", **config: Any) -> dict[str, Any]:
    return {"name": name, "op": ADD, "config": {"add": add, "input": input, "output": output, **config}}


A = _add("a", 1)
B = _add("b", 10, input="u")
C = _add("c", 100, input="v", output="out", reject_above=1000)


def _spec(step: Mapping[str, Any]) -> Any:
    return step_spec(step["name"], **{k: v for k, v in step.items() if k != "name"})


@contextlib.asynccontextmanager
async def _hosted(
    host: Mapping[str, Any],
    guests: Sequence[Mapping[str, Any]],
    *,
    steps: Sequence[str],
    data_path: str = "stepToStep",
    elsewhere: Sequence[Mapping[str, Any]] = (),
) -> AsyncIterator[tuple[Gateway, StepServer, dict[str, StepServer]]]:
    """`host`'s server serving `guests` too, servers of their own for `elsewhere` (the host's peers), and a gateway
    over the chain `steps` that finds every hosted step at the host's port."""
    others: dict[str, StepServer] = {}
    server: StepServer | None = None
    try:
        for step in elsewhere:
            others[step["name"]] = create_step_server(_spec(step))
            await others[step["name"]].start()
        peers = peer_sources({name: [f"127.0.0.1:{s.port}"] for name, s in others.items()})
        server = create_step_server(_spec(host), in_process=[_spec(g) for g in guests], peers=peers)
        await server.start()
        address = f"127.0.0.1:{server.port}"
        endpoints = {name: [f"127.0.0.1:{others[name].port}"] if name in others else [address] for name in steps}
        m = manifest("ip", [{"name": name, "op": "identity"} for name in steps], gateway={"dataPath": data_path})
        gateway = create_gateway(m, endpoints=endpoints, host="127.0.0.1", grpc_port=0, http_port=None)
        await gateway.start()
        try:
            assert await gateway.wait_ready(10)
            yield gateway, server, others
        finally:
            await gateway.stop(0)
    finally:
        if server is not None:
            await server.stop(grace=2.0)
        for other in others.values():
            await other.stop(grace=2.0)


async def _infer(gateway: Gateway, x: np.ndarray) -> dict[str, np.ndarray]:
    request = pb.ModelInferRequest(model_name="ip", id="r")
    encode_tensors(request, [("x", x)])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        return decode_tensors(await InferenceStub(channel).ModelInfer(request, timeout=10))


def _served(gateway: Gateway) -> dict[str, int]:
    return {name: sum(r["served"] for r in balancer.snapshot()) for name, balancer in gateway.balancers.items()}


def _count(server: StepServer, name: str, labels: dict[str, str]) -> float:
    return server.metrics.registry.get_sample_value(name, labels) or 0.0


def _forwarded(server: StepServer) -> float:
    """Every gRPC call this server's steps made to other steps."""
    total = 0.0
    for family in server.metrics.registry.collect():
        if family.name == "conveyor_step_forwarded":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


async def test_in_process_steps_run_in_one_call_to_the_host_and_answer_as_separate_calls_do() -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    async with _hosted(B, [A, C], steps=["a", "b", "c"]) as (gateway, server, _):
        in_memory = [await _infer(gateway, x + i) for i in range(4)]
        assert _served(gateway) == {"a": 4, "b": 0, "c": 0}, "one call per request, to the chain's first step"
        assert _forwarded(server) == 0, "no step called another over gRPC"
        for step in ("a", "b", "c"):  # each did its own work once per request, counted under its own name
            assert _count(server, "conveyor_step_requests_total", {"step": step, "code": "OK"}) == 4
            assert _count(server, "conveyor_step_received_total", {"step": step}) == 4
            assert _count(server, "conveyor_step_batch_size_count", {"step": step}) >= 1
    async with _hosted(B, [A, C], steps=["a", "b", "c"], data_path="gateway") as (gateway, server, _):
        separate_calls = [await _infer(gateway, x + i) for i in range(4)]
        assert _served(gateway) == {"a": 4, "b": 4, "c": 4}
    for i, (one, other) in enumerate(zip(in_memory, separate_calls)):
        assert list(one) == ["out"] == list(other)
        np.testing.assert_array_equal(one["out"], x + i + 111)
        np.testing.assert_array_equal(other["out"], x + i + 111)


async def test_an_in_process_steps_failure_reaches_its_client_alone_in_its_own_words() -> None:
    async with _hosted(B, [A, C], steps=["a", "b", "c"]) as (gateway, server, _):
        good = [asyncio.create_task(_infer(gateway, np.full((1, 2), float(i), np.float32))) for i in range(6)]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _infer(gateway, np.full((1, 2), 5000.0, np.float32))  # c refuses values above 1000
        results = await asyncio.gather(*good)
        assert _count(server, "conveyor_step_requests_total", {"step": "a", "code": "OK"}) == 7, "not retried"
        assert _count(server, "conveyor_step_requests_total", {"step": "c", "code": "INVALID_ARGUMENT"}) == 1
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "step 'c': [TOO_LARGE] values above 1000"
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["out"], np.full((1, 2), i + 111.0))


async def test_a_host_serves_each_in_process_step_as_a_model_of_its_own() -> None:
    async with _hosted(B, [A, C], steps=["a", "b", "c"]) as (_, server, _):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = InferenceStub(channel)
            for model, tensor in (("a", "x"), ("b", "u"), ("c", "v"), ("", "u")):
                metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=5)
                assert metadata.name == (model or "b")
                assert [t.name for t in metadata.inputs] == [tensor]
                assert (await stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=5)).ready
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ModelMetadata(pb.ModelMetadataRequest(name="d"), timeout=5)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert "'b', 'a', 'c'" in (info.value.details() or "")
            request = pb.ModelInferRequest(model_name="c")  # a hosted step alone, called directly
            encode_tensors(request, [("v", np.ones((1, 2), np.float32))])
            answer = decode_tensors(await stub.ModelInfer(request, timeout=5))
            np.testing.assert_array_equal(answer["out"], np.full((1, 2), 101.0))


async def test_a_route_goes_on_from_the_host_to_a_step_elsewhere() -> None:
    async with _hosted(B, [A], steps=["a", "b", "c"], elsewhere=[C]) as (gateway, server, others):
        result = await _infer(gateway, np.ones((1, 2), np.float32))
        assert _served(gateway) == {"a": 1, "b": 0, "c": 0}
        assert _count(server, "conveyor_step_forwarded_total", {"step": "b", "to": "c", "code": "OK"}) == 1
        assert _count(others["c"], "conveyor_step_requests_total", {"step": "c", "code": "OK"}) == 1
    np.testing.assert_array_equal(result["out"], np.full((1, 2), 112.0))


def _identity_pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.yaml"
    steps = [
        {"name": "pre", "op": "identity", "inProcessWith": "mid"},
        {"name": "mid", "op": "identity"},
        {"name": "post", "op": "identity", "inProcessWith": "mid"},
    ]
    document = {"apiVersion": "conveyor.dev/v1alpha1", "kind": "InferencePipeline", "metadata": {"name": "ip"}}
    path.write_text(yaml.safe_dump({**document, "spec": {"steps": steps}}))
    return path


def test_step_command_serves_a_host_with_its_guests_and_refuses_to_serve_a_guest_alone(tmp_path: Path) -> None:
    path = _identity_pipeline(tmp_path)
    spec, _ = load_step_spec(path, "mid")
    assert spec.name == "mid"
    with pytest.raises(UsageError, match="serve --step mid"):
        load_step_spec(path, "pre")


def test_conveyor_run_starts_one_process_for_a_host_and_its_in_process_steps(tmp_path: Path) -> None:
    import tritonclient.grpc as tgrpc

    run = start_run(_identity_pipeline(tmp_path), tmp_path)
    try:
        steps = run.addresses["steps"]
        pids = {replica["pid"] for replicas in steps.values() for replica in replicas}
        assert len(pids) == 1 and [len(steps[name]) for name in ("pre", "mid", "post")] == [1, 1, 1]
        assert steps["pre"][0]["inProcessWith"] == "mid" and "inProcessWith" not in steps["mid"][0]
        client = tgrpc.InferenceServerClient(run.grpc)
        try:
            data = np.arange(6, dtype=np.float32).reshape(3, 2)
            tensor = tgrpc.InferInput("x", [3, 2], "FP32")
            tensor.set_data_from_numpy(data)
            answer = client.infer("ip", [tensor], client_timeout=60).as_numpy("x")
        finally:
            client.close()
        np.testing.assert_array_equal(answer, data)
        with urllib.request.urlopen(f"http://{steps['mid'][0]['metrics']}/metrics", timeout=5) as page:
            text = page.read().decode()
        for step in ("pre", "mid", "post"):
            assert f'conveyor_step_requests_total{{code="OK",step="{step}"}} 1.0' in text, text
    finally:
        run.stop()
