"""ONNX Runtime planning (providers, fp16, threads) checked with fake availability, and real CPU sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conveyor_runtime.errors import ModelLoadError
from conveyor_runtime.spec import ModelSpec
from conveyor_runtime.step import ModelSession, plan_precision, plan_providers, plan_threads
from tests.support.step_fixtures import ModelFiles, model_files  # noqa: F401 (fixture)

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
GPU_BUILD = [TRT, CUDA, CPU]


def _model(**fields: object) -> ModelSpec:
    return ModelSpec.model_validate({"path": "m.onnx", **fields})


@pytest.mark.parametrize(
    ("device", "available", "expected"),
    [
        ("cpu", GPU_BUILD, [CPU]),
        ("cuda", GPU_BUILD, [CUDA, CPU]),
        ("cuda", [CPU], [CPU]),
        ("tensorrt", GPU_BUILD, [TRT, CUDA, CPU]),
        ("tensorrt", [CUDA, CPU], [CUDA, CPU]),
        ("tensorrt", ["AzureExecutionProvider", CPU], [CPU]),
    ],
)
def test_session_plan_providers_falls_back_to_cpu(device: str, available: list[str], expected: list[str]) -> None:
    plan = plan_providers(_model(device=device), available)
    assert [name for name, _ in plan] == expected


def test_session_plan_providers_tensorrt_options_carry_fp16_and_cache(tmp_path: Path) -> None:
    plan = plan_providers(_model(device="tensorrt", precision="fp16"), GPU_BUILD, cache_dir=tmp_path)
    name, options = plan[0]
    assert name == TRT
    assert options["trt_fp16_enable"] is True
    assert options["trt_engine_cache_enable"] is True and options["trt_engine_cache_path"] == str(tmp_path)
    assert plan_providers(_model(device="tensorrt"), GPU_BUILD)[0][1]["trt_fp16_enable"] is False


@pytest.mark.parametrize(
    ("precision", "provider", "expected"),
    [("fp16", TRT, "fp16-tensorrt"), ("fp16", CUDA, "fp16-convert"), ("fp16", CPU, "fp32"), ("fp32", CUDA, "fp32")],
)
def test_session_plan_precision_uses_fp16_on_gpu_only(precision: str, provider: str, expected: str) -> None:
    assert plan_precision(_model(precision=precision), provider) == expected


def test_session_plan_threads_split_cores_between_instances() -> None:
    assert plan_threads(_model(), cpus=2) == (0, 0)
    assert plan_threads(_model(instances=2), cpus=2) == (1, 0)
    assert plan_threads(_model(instances=3), cpus=2) == (1, 0)
    assert plan_threads(_model(instances=2, intraOpThreads=4, interOpThreads=1), cpus=8) == (4, 1)


def test_session_runs_instances_and_reports_metadata(model_files: ModelFiles) -> None:
    path = model_files.resnet(32)
    session = ModelSession(path, ModelSpec(path=str(path), instances=2))
    assert session.provider == CPU and session.instances == 2
    assert [(s.name, s.datatype, s.shape) for s in session.inputs] == [("image", "FP32", (-1, 3, 32, 32))]
    assert [(s.name, s.datatype, s.shape) for s in session.outputs] == [("logits", "FP32", (-1, 10))]
    assert session.fixed_batch is None
    session.warm_up([1, 3])
    out = session.run({"image": np.zeros((3, 3, 32, 32), np.float32)})
    assert out["logits"].shape == (3, 10)


def test_session_cuda_request_falls_back_to_cpu_here(model_files: ModelFiles, caplog: pytest.LogCaptureFixture) -> None:
    path = model_files.resnet(32)
    session = ModelSession(path, ModelSpec(path=str(path), device="cuda", precision="fp16"), available=[CPU])
    assert session.provider == CPU and session.precision == "fp32"
    assert "asks for device 'cuda'" in caplog.text


def test_session_fixed_batch_clashes_with_batching(model_files: ModelFiles) -> None:
    path = model_files.resnet(32, fixed_batch=2)
    session = ModelSession(path, ModelSpec(path=str(path)))
    assert session.fixed_batch == 2
    session.check_batching(0)
    with pytest.raises(ModelLoadError, match=r"fixed batch dimension of 2 .*maxBatchSize is 8.*maxBatchSize: 0"):
        session.check_batching(8)


def test_session_bad_file_is_a_model_load_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ModelLoadError, match="cannot load"):
        ModelSession(bad, ModelSpec(path=str(bad)))
