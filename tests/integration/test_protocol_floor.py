"""The protocol floor of `conveyor bench pipeline --floor`: a real null server process over real gRPC, answering the
given answer to every request, and the floor's count of requests and of both sides' CPU."""

from __future__ import annotations

import asyncio
import os

import grpc.aio
import numpy as np
import pytest

from conveyor_benchmarks.protocol_floor import measure_floor, null_server
from conveyor_runtime.protocol import InferenceStub, encode_tensors, pb


def _answer() -> pb.ModelInferResponse:
    answer = pb.ModelInferResponse(model_name="digits", model_version="1")
    encode_tensors(answer, [("scores", np.array([[0.9, 0.1]], np.float32)), ("labels", np.array([[b"7", b"1"]], object))])
    return answer


def _request(n: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="digits", id=f"r{n}")
    encode_tensors(request, [("image", np.full((1, 8, 8), n % 256, np.uint8))])
    return request


def test_null_server_answers_every_request_with_the_given_answer_under_its_id() -> None:
    async def call(address: str) -> list[pb.ModelInferResponse]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = InferenceStub(channel)
            return list(await asyncio.gather(*(stub.ModelInfer(_request(n), timeout=10) for n in range(3))))

    with null_server(_answer(), delay_s=0.0) as (address, pid):
        responses = asyncio.run(call(address))
    for n, response in enumerate(responses):
        expected = _answer()
        expected.id = f"r{n}"
        assert response == expected
    with pytest.raises(ProcessLookupError):  # stopped and reaped
        os.kill(pid, 0)


def test_measure_floor_counts_every_answered_request_and_the_cpu_of_both_sides() -> None:
    sent: list[int] = []

    def request(n: int) -> pb.ModelInferRequest:
        sent.append(n)
        return _request(n)

    # no warm-up: every request sent is one of the level's, also those still in flight when its window ends
    floor = measure_floor(_answer(), request, concurrency=4, delay_s=0.02, duration_s=1.0, warmup_s=0.0)
    assert floor.concurrency == 4 and floor.delay_ms == pytest.approx(20.0)
    assert floor.requests == len(sent) > 0 and floor.seconds >= 1.0
    # 4 clients each waiting 20 ms per answer cannot get more than 200 answers a second
    assert floor.requests_per_s <= 4 / 0.02
    assert floor.server_cpu_s > 0 and floor.client_cpu_s > 0
    assert 0 < floor.server_ms_per_request < float("inf") and 0 < floor.client_ms_per_request < float("inf")


def test_bench_floor_is_skipped_with_the_reason_when_the_pipeline_gives_no_answer(capsys: pytest.CaptureFixture[str]) -> None:
    # after every level is measured, a pipeline that no longer answers must not cost the report
    from conveyor_benchmarks.pipeline_bench import _answer
    from conveyor_runtime.serving import free_port

    assert asyncio.run(_answer(f"127.0.0.1:{free_port()}", _request(0))) is None
    assert "protocol floor: skipped, the pipeline did not answer (UNAVAILABLE" in capsys.readouterr().out
