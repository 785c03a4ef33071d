"""Helpers for step tests: ONNX models built once per session, and step servers started on 127.0.0.1:0."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest

from conveyor_examples import resnet
from conveyor_runtime.errors import OpError
from conveyor_runtime.ops import Arrays, Op, OpContext, RequestContext, Skip, TensorSpec
from conveyor_runtime.protocol import InferenceStub
from conveyor_runtime.spec import StepSpec
from conveyor_runtime.step import StepServer, create_step_server

__all__ = [
    "GATE",
    "DoubleOp",
    "GateOp",
    "ModelFiles",
    "SlowOp",
    "model_files",
    "running_step",
    "step_spec",
    "stub_for",
]


class ModelFiles:
    """ONNX files built on first use into one directory (never downloaded, never committed)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def resnet(self, image_size: int = 32, fixed_batch: int | None = None, depth: int = 18) -> Path:
        name = f"resnet{depth}_{image_size}" + (f"_b{fixed_batch}" if fixed_batch else "") + ".onnx"
        path = self.root / name
        if not path.exists():
            resnet.build(path, depth=depth, image_size=image_size, num_classes=10, fixed_batch=fixed_batch)
        return path

    def digits(self) -> Path:
        from conveyor_examples import digits

        path = self.root / "digits.onnx"
        if not path.exists():
            digits.build(path)
        return path


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    return ModelFiles(tmp_path_factory.mktemp("models"))


def step_spec(name: str = "classify", **fields: Any) -> StepSpec:
    """A StepSpec from manifest-style fields, e.g. ``model={"path": ...}, batching={"maxBatchSize": 4}``."""
    return StepSpec.model_validate({"name": name, **fields})


@contextlib.asynccontextmanager
async def running_step(spec: StepSpec, **kwargs: Any) -> AsyncIterator[StepServer]:
    """A started step server on 127.0.0.1 (free port); always stopped on exit."""
    server = create_step_server(spec, **kwargs)
    try:
        await server.start()
        yield server
    finally:
        await server.stop(grace=2.0)


@contextlib.asynccontextmanager
async def stub_for(server: StepServer) -> AsyncIterator[InferenceStub]:
    """A plain gRPC stub on a fresh channel to `server`."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield InferenceStub(channel)
    finally:
        await channel.close()


# --- ops for tests (referenced as `tests.support.step_fixtures:Name`) ----------------------------------


class DoubleOp(Op):
    """x FP32 [N,2] -> y = 2x; rejects negative input in preprocess with its own status and reason."""

    inputs = [TensorSpec("x", "FP32", (-1, 2))]
    outputs = [TensorSpec("y", "FP32", (-1, 2))]

    def preprocess(self, inputs: Arrays, request: RequestContext) -> Arrays | Skip:
        x = inputs["x"]
        if (x < 0).any():
            raise OpError("x must not be negative", status="FAILED_PRECONDITION", reason="NEGATIVE")
        if request.parameters.get("cached"):
            return Skip({"y": np.full_like(x, 7.0)})
        return inputs

    def process(self, batch: Arrays) -> Arrays:
        return {"y": batch["x"] * 2}


#: Opened by tests to let `GateOp.process` finish; `GateOp.seen` records the first column of every batch.
GATE = threading.Event()


class GateOp(DoubleOp):
    """Like DoubleOp, but `process` waits (bounded) for `GATE` and records what it computed."""

    seen: list[list[float]] = []
    entered = threading.Event()

    def process(self, batch: Arrays) -> Arrays:
        GateOp.seen.append(batch["x"][:, 0].tolist())
        GateOp.entered.set()
        GATE.wait(timeout=30)
        return {"y": batch["x"] * 2}


class SlowOp(DoubleOp):
    """Like DoubleOp, but `process` touches config `marker` (a file) then sleeps config `delay` seconds."""

    def init(self, config: dict[str, Any], context: OpContext) -> None:
        self.marker = Path(config["marker"])
        self.delay = float(config.get("delay", 1.0))

    def process(self, batch: Arrays) -> Arrays:
        self.marker.touch()
        time.sleep(self.delay)
        return {"y": batch["x"] * 2}


class AddOp(Op):
    """FP32 [N,2] + config `add`, from input config `input` (default x) to output config `output` (default y);
    values above config `reject_above` fail the request with INVALID_ARGUMENT (reason TOO_LARGE)."""

    def init(self, config: dict[str, Any], context: OpContext) -> None:
        self.add = float(config.get("add", 1.0))
        self.reject_above = config.get("reject_above")
        self.input_name = str(config.get("input", "x"))
        self.output_name = str(config.get("output", "y"))
        self.inputs = [TensorSpec(self.input_name, "FP32", (-1, 2))]
        self.outputs = [TensorSpec(self.output_name, "FP32", (-1, 2))]

    def preprocess(self, inputs: Arrays, request: RequestContext) -> Arrays | Skip:
        if self.reject_above is not None and (inputs[self.input_name] > float(self.reject_above)).any():
            raise OpError(f"values above {self.reject_above}", status="INVALID_ARGUMENT", reason="TOO_LARGE")
        return inputs

    def process(self, batch: Arrays) -> Arrays:
        return {self.output_name: batch[self.input_name] + self.add}


class SumOp(Op):
    """A join: FP32 [N,2] inputs named in config `inputs`, summed into `total`."""

    def init(self, config: dict[str, Any], context: OpContext) -> None:
        self.names = [str(name) for name in config["inputs"]]
        self.inputs = [TensorSpec(name, "FP32", (-1, 2)) for name in self.names]
        self.outputs = [TensorSpec("total", "FP32", (-1, 2))]

    def process(self, batch: Arrays) -> Arrays:
        return {"total": sum(batch[name] for name in self.names)}
