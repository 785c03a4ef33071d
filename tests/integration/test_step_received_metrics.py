"""A step counts every request it receives, and its rows, before any check: the live figures' arrival rates are then
exact for a step with no batch step, and they include requests the step refuses (real gRPC on loopback)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from conveyor_runtime.live import parse_metrics
from conveyor_runtime.protocol import encode_tensors, pb
from tests.support.step_fixtures import running_step, step_spec, stub_for


async def test_step_counts_received_requests_and_rows_refused_ones_included() -> None:
    async with running_step(step_spec("relay", op="identity"), metrics_port=None) as server, stub_for(server) as stub:
        for rows in (3, 1):
            request = pb.ModelInferRequest(model_name="relay")
            encode_tensors(request, [("x", np.zeros((rows, 2), np.float32))])
            await stub.ModelInfer(request, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ModelInfer(pb.ModelInferRequest(model_name="relay"), timeout=10)  # no inputs: INVALID_ARGUMENT
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        sample = parse_metrics(server.metrics.text())
    assert sample.received == 3
    assert sample.received_rows == 5  # 3 + 1 + 1 (a request without inputs counts one row)
    assert sample.requests == {"OK": 2.0, "INVALID_ARGUMENT": 1.0}
