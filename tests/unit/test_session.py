"""ONNX Runtime planning (providers, fp16, threads) checked with fake availability, and real CPU sessions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conveyor_runtime.errors import ModelLoadError
from conveyor_runtime.spec import ModelSpec
from conveyor_runtime.step import (
    CpuBudget,
    ModelSession,
    plan_devices,
    plan_precision,
    plan_providers,
    plan_threads,
    plan_wide_threads,
)
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


def test_session_plan_threads_split_the_cpu_budget_between_instances() -> None:
    assert plan_threads(_model(), cpus=2) == (2, 0)  # the budget, not ONNX Runtime's default of every core
    assert plan_threads(_model(), cpus=64) == (64, 0)
    assert plan_threads(_model(instances=2), cpus=2) == (1, 0)
    assert plan_threads(_model(instances=3), cpus=2) == (1, 0)
    assert plan_threads(_model(instances=4), cpus=8) == (2, 0)
    assert plan_threads(_model(instances=2, intraOpThreads=4, interOpThreads=1), cpus=8) == (4, 1)  # explicit wins
    assert plan_threads(_model(intraOpThreads=16), cpus=2) == (16, 0)


def test_session_sizes_intra_op_threads_from_the_budget_and_logs_why(
    model_files: ModelFiles, caplog: pytest.LogCaptureFixture
) -> None:
    path = model_files.resnet(32)
    caplog.set_level("INFO")
    session = ModelSession(path, ModelSpec(path=str(path), instances=2), cpus=CpuBudget(6, "resources.cpu '6'"))
    assert session.threads == 3
    assert "intra-op threads 3 per instance (CPU budget 6 from resources.cpu '6', split over 2 instance(s))" in caplog.text
    explicit = ModelSession(path, ModelSpec(path=str(path), intraOpThreads=1), cpus=CpuBudget(6, "resources.cpu '6'"))
    assert explicit.threads == 1
    assert "intra-op threads 1 per instance (model.intraOpThreads)" in caplog.text
    out = session.run({"image": np.zeros((2, 3, 32, 32), np.float32)})
    assert out["logits"].shape == (2, 10)


@pytest.mark.parametrize(
    ("instances", "gpus", "devices"),
    [(3, 0, [0, 0, 0]), (3, 1, [0, 0, 0]), (4, 2, [0, 1, 0, 1]), (3, 2, [0, 1, 0]), (2, 4, [0, 1])],
)
def test_session_plan_devices_spread_instances_over_the_gpus(instances: int, gpus: int, devices: list[int]) -> None:
    assert plan_devices(instances, gpus) == devices


def test_session_plan_providers_ask_for_the_given_gpu() -> None:
    plan = plan_providers(_model(device="tensorrt"), GPU_BUILD, device_id=1)
    assert [(name, options["device_id"]) for name, options in plan[:2]] == [(TRT, 1), (CUDA, 1)]
    assert plan[2] == (CPU, {})


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available provider names")
def test_session_requests_instance_i_on_gpu_i_mod_n(model_files: ModelFiles, caplog: pytest.LogCaptureFixture) -> None:
    """On this CPU-only build ONNX Runtime falls back to CPU; what matters is what each instance asked for."""
    path = model_files.resnet(32)
    caplog.set_level("INFO")
    session = ModelSession(path, ModelSpec(path=str(path), device="cuda", instances=3), available=[CUDA, CPU], gpus=2)
    assert [plan[0] for plan in session.plans] == [(CUDA, {"device_id": 0}), (CUDA, {"device_id": 1}), (CUDA, {"device_id": 0})]
    assert all(plan[-1] == (CPU, {}) for plan in session.plans)
    assert "3 instance(s) over 2 GPU(s): GPU 0: 2, GPU 1: 1" in caplog.text
    one = ModelSession(path, ModelSpec(path=str(path), device="cuda"), available=[CUDA, CPU], gpus=4)
    assert [plan[0] for plan in one.plans] == [(CUDA, {"device_id": 0})]
    assert "GPUs 1, 2, 3 of 4 stay idle: set model.instances to 4 or more to use them" in caplog.text


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


@pytest.mark.parametrize(
    ("fields", "cpus", "provider", "expected"),
    [
        ({"instances": 2}, 2, CPU, 2),  # two 1-thread instances, lone batches on both cores
        ({"instances": 4}, 8, CPU, 8),
        ({"instances": 3}, 2, CPU, 2),
        ({"instances": 1}, 4, CPU, None),  # the one instance has the whole budget already
        ({"instances": 2}, 1, CPU, None),  # one CPU: nothing wider to run on
        ({"instances": 2, "intraOpThreads": 1}, 4, CPU, None),  # explicit threads win
        ({"instances": 2, "adaptiveThreads": False}, 4, CPU, None),
        ({"instances": 2}, 4, CUDA, None),  # GPU sessions are not sized by CPU threads
    ],
)
def test_session_plan_wide_threads_only_when_a_lone_batch_would_get_more_cores(
    fields: dict[str, Any], cpus: int, provider: str, expected: int | None
) -> None:
    assert plan_wide_threads(_model(**fields), cpus, provider) == expected


class _Recording:
    """Stands in for a session: records the batches it runs, answers zeros."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def run(self, names: list[str], feed: dict[str, Any]) -> list[Any]:
        self.rows.append(len(next(iter(feed.values()))))
        return [np.zeros((self.rows[-1], 10), np.float32)]


def test_session_runs_a_batch_alone_on_the_session_with_the_whole_budget(
    model_files: ModelFiles, caplog: pytest.LogCaptureFixture
) -> None:
    path = model_files.resnet(32)
    caplog.set_level("INFO")
    session = ModelSession(path, ModelSpec(path=str(path), instances=2), cpus=CpuBudget(2, "2 CPU(s)"))
    assert (session.threads, session.wide_threads) == (1, 2)
    assert "runs on one more session with 2 intra-op threads" in caplog.text
    image = {"image": np.random.default_rng(0).random((2, 3, 32, 32), np.float32)}
    np.testing.assert_allclose(session.run_alone(image)["logits"], session.run(image)["logits"], rtol=1e-4, atol=1e-5)
    wide = _Recording()
    session._wide = wide  # type: ignore[assignment]
    session.run(image)
    assert wide.rows == []  # a batch beside others runs on an instance
    session.run_alone(image)
    assert wide.rows == [2]


def _spinning(session: Any) -> tuple[str, str]:
    """(allow_spinning, force_spinning_stop) as ONNX Runtime holds them for `session` ("" where unset)."""
    options = session.get_session_options()

    def entry(key: str) -> str:
        try:
            return str(options.get_session_config_entry(key))
        except RuntimeError:  # "does not have configuration with key"
            return ""

    return entry("session.intra_op.allow_spinning"), entry("session.force_spinning_stop")


def test_only_the_lone_batch_session_spins_and_only_while_it_runs(model_files: ModelFiles) -> None:
    # An instance's threads never spin (they would take the cores that the next batch is prepared on); the session
    # for lone batches spins during its runs, stopping when a run returns.
    path = model_files.resnet(32)
    session = ModelSession(path, ModelSpec(path=str(path), instances=2), cpus=CpuBudget(2, "2 CPU(s)"))
    instances = [session._sessions.get() for _ in range(2)]
    assert [_spinning(s) for s in instances] == [("0", ""), ("0", "")]
    assert _spinning(session._wide) == ("1", "1")
    for instance in instances:
        session._sessions.put(instance)
    assert session.run_alone({"image": np.zeros((1, 3, 32, 32), np.float32)})["logits"].shape == (1, 10)


def test_a_session_asked_to_spin_spins_on_its_instances_while_they_run(model_files: ModelFiles) -> None:
    path = model_files.resnet(32)
    session = ModelSession(path, ModelSpec(path=str(path), intraOpThreads=2), cpus=CpuBudget(2, "2 CPU(s)"), spin=True)
    assert _spinning(session._sessions.get()) == ("1", "1")


def test_session_without_adaptive_threads_runs_a_batch_alone_on_an_instance(model_files: ModelFiles) -> None:
    path = model_files.resnet(32)
    spec = ModelSpec(path=str(path), instances=2, adaptiveThreads=False)
    session = ModelSession(path, spec, cpus=CpuBudget(2, "2 CPU(s)"))
    assert session.wide_threads is None
    assert session.run_alone({"image": np.zeros((1, 3, 32, 32), np.float32)})["logits"].shape == (1, 10)


def test_session_without_room_for_the_lone_batch_session_serves_on_its_instances(
    model_files: ModelFiles, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = model_files.resnet(32)
    opened = ModelSession._open

    def open_all_but_the_wide(source: Any, options: Any, wanted: Any) -> Any:
        if options.intra_op_num_threads == 2:
            raise ModelLoadError("ONNX Runtime cannot load the model: out of memory")
        return opened(source, options, wanted)

    monkeypatch.setattr(ModelSession, "_open", staticmethod(open_all_but_the_wide))
    session = ModelSession(path, ModelSpec(path=str(path), instances=2), cpus=CpuBudget(2, "2 CPU(s)"))
    assert session.wide_threads is None
    assert "no session for lone batches" in caplog.text
    assert session.run_alone({"image": np.zeros((1, 3, 32, 32), np.float32)})["logits"].shape == (1, 10)
