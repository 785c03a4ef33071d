"""Step-to-step forwarding over real gRPC: real step servers that forward along a chain, behind a real gateway.

What is checked: the gateway calls only the first step of a chain and the tensors between steps never reach it;
the answers equal those of `dataPath: gateway`; a later step's failure keeps its status and words, is not retried
at the first step and fails only its own request; a step that cannot reach its peer hands back, and the gateway
carries on; joins still get every input; a malformed route is INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest

from conveyor_runtime.gateway import Gateway, create_gateway
from conveyor_runtime.protocol import ROUTE_PARAMETER, InferenceStub, decode_tensors, encode_tensors, pb
from conveyor_runtime.step import StepServer, create_step_server, peer_sources
from tests.support import step_fixtures
from tests.support.pipeline_fixtures import eventually, manifest
from tests.support.step_fixtures import step_spec

ADD = "tests.support.step_fixtures:AddOp"


def _add_step(name: str, add: float, *, input: str = "x", output: str = "y", **config: Any) -> dict[str, Any]:
    return {"name": name, "op": ADD, "config": {"add": add, "input": input, "output": output, **config}}


@contextlib.asynccontextmanager
async def _pipeline(
    steps: Sequence[dict[str, Any]],
    peers: Mapping[str, Sequence[str]],
    *,
    data_path: str = "stepToStep",
    output: str | None = None,
) -> AsyncIterator[tuple[Gateway, dict[str, StepServer]]]:
    """Step servers for `steps` (started last to first, each told where the steps in `peers[name]` are) and a gateway."""
    servers: dict[str, StepServer] = {}
    try:
        for step in reversed(steps):
            fields = {k: v for k, v in step.items() if k not in ("name", "inputs")}
            known = {peer: [f"127.0.0.1:{servers[peer].port}"] for peer in peers.get(step["name"], ())}
            server = create_step_server(step_spec(step["name"], **fields), peers=peer_sources(known))
            await server.start()
            servers[step["name"]] = server
        spec: dict[str, Any] = {"gateway": {"dataPath": data_path}}
        if output:
            spec["output"] = output
        m = manifest("fwd", [{"name": s["name"], "op": "identity", **({"inputs": s["inputs"]} if "inputs" in s else {})} for s in steps], **spec)
        gateway = create_gateway(
            m,
            endpoints={name: [f"127.0.0.1:{server.port}"] for name, server in servers.items()},
            host="127.0.0.1",
            grpc_port=0,
            http_port=None,
        )
        await gateway.start()
        try:
            assert await gateway.wait_ready(10)
            yield gateway, servers
        finally:
            await gateway.stop(0)
    finally:
        for server in servers.values():
            await server.stop(grace=2.0)


CHAIN = [_add_step("a", 1), _add_step("b", 10, input="u", reject_above=1000), _add_step("c", 100, input="v", output="out")]
CHAIN_PEERS = {"a": ["b"], "b": ["c"]}


def _request(x: np.ndarray, model: str = "fwd", name: str = "x") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id="r")
    encode_tensors(request, [(name, x)])
    return request


async def _infer(gateway: Gateway, x: np.ndarray, timeout: float = 10) -> dict[str, np.ndarray]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        return decode_tensors(await InferenceStub(channel).ModelInfer(_request(x), timeout=timeout))


def _served(gateway: Gateway) -> dict[str, int]:
    """Calls the gateway made to each step."""
    return {name: sum(r["served"] for r in balancer.snapshot()) for name, balancer in gateway.balancers.items()}


def _counter(server: StepServer, name: str, labels: dict[str, str]) -> float:
    return server.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_forwarding_gateway_calls_only_the_first_step_and_answers_as_the_gateway_path() -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    async with _pipeline(CHAIN, CHAIN_PEERS) as (gateway, servers):
        forwarded = [await _infer(gateway, x + i) for i in range(4)]
        assert _served(gateway) == {"a": 4, "b": 0, "c": 0}
        assert _counter(servers["a"], "conveyor_step_forwarded_total", {"step": "a", "to": "b", "code": "OK"}) == 4
        assert _counter(servers["b"], "conveyor_step_forwarded_total", {"step": "b", "to": "c", "code": "OK"}) == 4
        for server in servers.values():  # every step still did its own work, once per request
            assert _counter(server, "conveyor_step_requests_total", {"step": server.spec.name, "code": "OK"}) == 4
    async with _pipeline(CHAIN, CHAIN_PEERS, data_path="gateway") as (gateway, servers):
        through_gateway = [await _infer(gateway, x + i) for i in range(4)]
        assert _served(gateway) == {"a": 4, "b": 4, "c": 4}
        assert _counter(servers["a"], "conveyor_step_forwarded_total", {"step": "a", "to": "b", "code": "OK"}) == 0
    for i, (one, other) in enumerate(zip(forwarded, through_gateway)):
        assert list(one) == ["out"] and list(other) == ["out"]
        np.testing.assert_array_equal(one["out"], x + i + 111)
        np.testing.assert_array_equal(other["out"], x + i + 111)


async def test_forwarding_relays_a_later_steps_error_alone_without_retrying_the_first_step() -> None:
    async with _pipeline(CHAIN, CHAIN_PEERS) as (gateway, servers):
        good = [asyncio.create_task(_infer(gateway, np.full((1, 2), float(i), np.float32))) for i in range(6)]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _infer(gateway, np.full((1, 2), 5000.0, np.float32))  # b refuses values above 1000
        results = await asyncio.gather(*good)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "step 'b': [TOO_LARGE] values above 1000"
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["out"], np.full((1, 2), i + 111.0))
    answered = _counter(servers["a"], "conveyor_step_requests_total", {"step": "a", "code": "OK"})
    assert answered == 7, "the first step is called once per request: a relayed failure is not retried"
    failed = {"step": "a", "to": "b", "code": "INVALID_ARGUMENT"}
    assert _counter(servers["a"], "conveyor_step_forwarded_total", failed) == 1


async def test_forwarding_waits_out_a_gone_peer_and_uses_it_again_once_it_is_back() -> None:
    async with _pipeline(CHAIN, CHAIN_PEERS) as (gateway, servers):
        port = servers["c"].port
        await servers["c"].stop(grace=0.5)  # c is gone: b waits for a ready replica of it until the deadline
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _infer(gateway, np.ones((1, 2), np.float32), timeout=1.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert _counter(servers["a"], "conveyor_step_requests_total", {"step": "a", "code": "OK"}) == 1  # not retried
        servers["c"] = create_step_server(step_spec("c", **{k: v for k, v in CHAIN[2].items() if k != "name"}), port=port)
        await servers["c"].start()
        result = await _infer(gateway, np.ones((1, 2), np.float32))  # b's health watch finds c again
        np.testing.assert_array_equal(result["out"], np.full((1, 2), 112.0))
        assert _served(gateway)["c"] == 0


async def test_a_full_forwarded_step_gets_later_requests_refused_at_the_gateway_before_any_step_works() -> None:
    gated = {"name": "b", "op": "tests.support.step_fixtures:GateOp", "batching": {"maxBatchSize": 1, "maxQueueSize": 1}}
    steps = [_add_step("a", 1), gated, _add_step("c", 100, input="v", output="out")]
    step_fixtures.GATE.clear()
    step_fixtures.GateOp.entered.clear()
    try:
        async with _pipeline(steps, CHAIN_PEERS) as (gateway, servers):
            received = lambda name: _counter(servers[name], "conveyor_step_received_total", {"step": name})  # noqa: E731
            computing = asyncio.create_task(_infer(gateway, np.ones((1, 2), np.float32)))
            await asyncio.to_thread(step_fixtures.GateOp.entered.wait, 10)
            queued = asyncio.create_task(_infer(gateway, np.ones((1, 2), np.float32)))
            await eventually(lambda: received("b") == 2, what="the second request queued at b")
            with pytest.raises(grpc.aio.AioRpcError) as relayed:  # b's queue is full: refused there, relayed by a
                await _infer(gateway, np.ones((1, 2), np.float32))
            assert received("a") == 3
            with pytest.raises(grpc.aio.AioRpcError) as at_entry:  # the gateway now knows: no step is called
                await _infer(gateway, np.ones((1, 2), np.float32))
            assert received("a") == 3 and received("b") == 3
            step_fixtures.GATE.set()
            answers = await asyncio.gather(computing, queued)
    finally:
        step_fixtures.GATE.set()
    for error in (relayed.value, at_entry.value):  # b's own words both times, as on the gateway path
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (error.details() or "").startswith("step 'b': step 'b' queue is full"), error.details()
    for answer in answers:  # GateOp doubles: (1 + 1) * 2 + 100
        np.testing.assert_array_equal(answer["out"], np.full((1, 2), 104.0))


async def test_a_step_that_cannot_reach_its_peer_answers_and_the_gateway_carries_on() -> None:
    async with _pipeline(CHAIN, {"a": ["b"]}) as (gateway, servers):  # b knows no way to c
        result = await _infer(gateway, np.ones((1, 2), np.float32))
        np.testing.assert_array_equal(result["out"], np.full((1, 2), 112.0))
        assert _served(gateway) == {"a": 1, "b": 0, "c": 1}


async def test_forwarding_runs_chains_between_a_fan_out_and_a_join() -> None:
    # a feeds b and d; b -> c is a chain the gateway starts at b; d joins a and c
    steps = [
        _add_step("a", 1, output="p"),
        _add_step("b", 10, input="p", output="q"),
        {**_add_step("c", 100, input="q", output="r"), "inputs": ["b"]},
        {"name": "d", "op": "tests.support.step_fixtures:SumOp", "config": {"inputs": ["p", "r"]}, "inputs": ["a", "c"]},
    ]
    peers = {"a": ["b", "d"], "b": ["c"], "c": ["d"]}
    async with _pipeline(steps, peers) as (gateway, _):
        result = await _infer(gateway, np.ones((1, 2), np.float32))
        assert _served(gateway) == {"a": 1, "b": 1, "c": 0, "d": 1}
    # p = 2, r = p + 110 = 112, total = 114
    np.testing.assert_array_equal(result["total"], np.full((1, 2), 114.0))


async def test_a_step_refuses_a_malformed_route_with_invalid_argument() -> None:
    async with _pipeline(CHAIN, CHAIN_PEERS) as (_, servers):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['a'].port}") as channel:
            stub = InferenceStub(channel)
            for route in ("b,,c", "B", "../c"):
                request = _request(np.ones((1, 2), np.float32), model="a")
                request.parameters[ROUTE_PARAMETER].string_param = route
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.ModelInfer(request, timeout=5)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, route
                assert ROUTE_PARAMETER in (info.value.details() or "")
            request = _request(np.ones((1, 2), np.float32), model="a")
            request.parameters[ROUTE_PARAMETER].int64_param = 3
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ModelInfer(request, timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            # a well-formed route is followed when the step is called directly, too
            request = _request(np.ones((1, 2), np.float32), model="a")
            request.parameters[ROUTE_PARAMETER].string_param = "b,c"
            response = await stub.ModelInfer(request, timeout=5)
            np.testing.assert_array_equal(decode_tensors(response)["out"], np.full((1, 2), 112.0))
