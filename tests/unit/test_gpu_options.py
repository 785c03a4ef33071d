"""GPU options the steps ask ONNX Runtime for, checked on CPU: TensorRT profiles over the batch range, the engine
cache's place, per-step GPU memory caps, and fp16 without a throwaway fp32 session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conveyor_runtime.spec import ModelSpec, StepSpec
from conveyor_runtime.step import ModelSession, plan_memory_limits, plan_providers
from conveyor_runtime.step import session as session_module
from conveyor_runtime.step.gpu_options import (
    BatchRange,
    model_input_shapes,
    parse_bytes,
    tensorrt_cache_dir,
    tensorrt_profile_options,
)
from tests.support.step_fixtures import ModelFiles, model_files  # noqa: F401 (fixture)

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
GiB = 2**30
#: ONNX Runtime warns when asked for a provider its build lacks; on this CPU build that is the point of the test.
LACKS_GPU = "ignore:Specified provider '.*' is not in available provider names"


@pytest.mark.parametrize(
    ("text", "value"),
    [("4Gi", 4 * GiB), ("512Mi", 512 * 2**20), ("1G", 10**9), ("1500000", 1_500_000), ("1.5Gi", 3 * GiB // 2), ("8k", 8000)],
)
def test_parse_bytes_reads_kubernetes_quantities(text: str, value: int) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["4GB", "Gi", "-1Gi", "4 Gi", "100m"])
def test_parse_bytes_refuses_what_is_not_a_byte_quantity(text: str) -> None:
    with pytest.raises(ValueError, match="is not a byte quantity"):
        parse_bytes(text)


@pytest.mark.parametrize("text", ["4GB", "100m", "1.5"])
def test_resources_gpu_memory_takes_the_same_quantities_as_the_step(text: str) -> None:
    """The manifest's pattern and `parse_bytes` agree: what the schema takes, the step can read."""
    data = {"name": "s", "model": {"path": "m.onnx", "device": "cuda"}, "resources": {"gpuMemory": text}}
    try:
        spec = StepSpec.model_validate(data)
    except ValueError:
        with pytest.raises(ValueError):
            parse_bytes(text)
    else:
        assert spec.resources.gpuMemory is not None
        assert parse_bytes(spec.resources.gpuMemory) > 0


def test_batch_range_spans_one_to_max_with_the_largest_preferred_size_as_opt() -> None:
    assert BatchRange.for_batching(32, [8, 16]) == BatchRange(1, 16, 32)
    assert BatchRange.for_batching(8, []) == BatchRange(1, 8, 8)
    assert BatchRange.for_batching(0, []) is None


def test_tensorrt_profile_covers_every_input_over_the_batch_range() -> None:
    inputs = [("image", ("batch", 3, 224, 224)), ("mask", (None, 224, 224)), ("fixed", (2, 5))]
    profile, why_not = tensorrt_profile_options(inputs, BatchRange(1, 16, 32))
    assert why_not == ""
    assert profile == {
        "trt_profile_min_shapes": "image:1x3x224x224,mask:1x224x224,fixed:2x5",
        "trt_profile_opt_shapes": "image:16x3x224x224,mask:16x224x224,fixed:2x5",
        "trt_profile_max_shapes": "image:32x3x224x224,mask:32x224x224,fixed:2x5",
    }


@pytest.mark.parametrize(
    ("inputs", "batch", "reason"),
    [
        ([("image", ("batch", 3, "h", "w"))], BatchRange(1, 8, 8), "dynamic dimensions besides the batch"),
        ([("in:0", ("batch", 3))], BatchRange(1, 8, 8), "':' or ','"),
        ([("image", ("batch", 3))], None, "batching is off"),
    ],
)
def test_tensorrt_profile_says_why_when_it_cannot_be_given(
    inputs: list[tuple[str, tuple[int | str | None, ...]]], batch: BatchRange | None, reason: str
) -> None:
    profile, why_not = tensorrt_profile_options(inputs, batch)
    assert profile == {} and reason in why_not


def test_model_input_shapes_reads_the_file_without_a_session(model_files: ModelFiles) -> None:
    [(name, shape)] = model_input_shapes(model_files.resnet(32))
    assert name == "image"
    assert shape[1:] == (3, 32, 32)
    assert not isinstance(shape[0], int)  # the batch dimension is dynamic (a name or None)


def test_tensorrt_cache_dir_follows_the_environment(tmp_path: Path) -> None:
    assert tensorrt_cache_dir({"CONVEYOR_TRT_CACHE": str(tmp_path)}) == tmp_path
    assert tensorrt_cache_dir({"HOME": "/home/u"}) == Path("/home/u/.cache/conveyor/tensorrt")


def test_plan_providers_caps_gpu_memory_and_carries_the_profile(tmp_path: Path) -> None:
    model = ModelSpec(path="m.onnx", device="tensorrt")
    profile = {"trt_profile_min_shapes": "x:1x4", "trt_profile_opt_shapes": "x:8x4", "trt_profile_max_shapes": "x:8x4"}
    plan = dict(plan_providers(model, [TRT, CUDA, CPU], cache_dir=tmp_path, profile=profile, memory_limit=2 * GiB))
    assert {k: plan[TRT][k] for k in profile} == profile
    assert plan[TRT]["trt_max_workspace_size"] == 2 * GiB
    assert plan[TRT]["trt_timing_cache_enable"] is True and plan[TRT]["trt_timing_cache_path"] == str(tmp_path)
    assert plan[CUDA] == {"device_id": 0, "gpu_mem_limit": 2 * GiB, "arena_extend_strategy": "kSameAsRequested"}
    assert plan_providers(ModelSpec(path="m.onnx", device="cuda"), [CUDA, CPU])[0] == (CUDA, {"device_id": 0})


def test_plan_memory_limits_split_the_share_over_the_instances_on_each_gpu() -> None:
    assert plan_memory_limits([0, 1, 0], 6 * GiB) == [3 * GiB, 6 * GiB, 3 * GiB]
    assert plan_memory_limits([0, 0], None) == [None, None]


@pytest.mark.filterwarnings(LACKS_GPU)
def test_session_asks_tensorrt_for_a_profile_over_the_steps_batch_range_and_a_cache(
    model_files: ModelFiles, tmp_path: Path
) -> None:
    path = model_files.resnet(32)
    session = ModelSession(
        path,
        ModelSpec(path=str(path), device="tensorrt", instances=2),
        available=[TRT, CUDA, CPU],
        batch=BatchRange(1, 8, 16),
        gpu_memory=4 * GiB,
        trt_cache=tmp_path,
    )
    name, options = session.plans[0][0]
    assert name == TRT
    assert options["trt_profile_min_shapes"] == "image:1x3x32x32"
    assert options["trt_profile_opt_shapes"] == "image:8x3x32x32"
    assert options["trt_profile_max_shapes"] == "image:16x3x32x32"
    assert options["trt_engine_cache_path"] == str(tmp_path)
    assert options["trt_max_workspace_size"] == 2 * GiB  # two instances on GPU 0 share the replica's 4 GiB
    assert session.provider == CPU  # this build has no GPU: the fallback still serves
    assert session.run({"image": np.zeros((2, 3, 32, 32), np.float32)})["logits"].shape == (2, 10)


@pytest.mark.filterwarnings(LACKS_GPU)
def test_session_fp16_on_cuda_opens_the_converted_model_first(
    model_files: ModelFiles, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No fp32 session is opened before the conversion (on a GPU it would hold a second copy of the weights);
    here CUDA cannot start, so the step then runs the original model in fp32 on CPU and says so."""
    path = model_files.resnet(32)
    opened: list[str] = []
    real_open = ModelSession._open

    def spy(source: str | bytes, options: object, wanted: object) -> object:
        opened.append("converted" if isinstance(source, bytes) else "original")
        return real_open(source, options, wanted)  # type: ignore[arg-type]

    monkeypatch.setattr(session_module, "_to_fp16", lambda p: Path(p).read_bytes())  # the converter's stand-in
    monkeypatch.setattr(ModelSession, "_open", staticmethod(spy))
    caplog.set_level("WARNING")
    session = ModelSession(path, ModelSpec(path=str(path), device="cuda", precision="fp16"), available=[CUDA, CPU])
    assert opened == ["converted", "original"]
    assert session.precision == "fp32" and "CUDA did not start, so fp16 is off" in caplog.text
