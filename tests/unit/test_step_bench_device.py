"""`conveyor bench step --device`: what the step is asked for, and an in-process baseline that refuses to run on
another provider than the one named (a CPU-only ONNX Runtime cannot be the CUDA baseline)."""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from conveyor_benchmarks.step_bench import InProcessRun, _in_process, _spec, register


def _args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["step", *extra])


def test_step_bench_device_cuda_asks_the_step_for_cuda_and_one_gpu(tmp_path: Path) -> None:
    spec = _spec(_args("--device", "cuda"), tmp_path / "m.onnx")
    assert spec.model is not None and spec.model.device == "cuda" and spec.resources.gpu == 1
    cpu = _spec(_args(), tmp_path / "m.onnx")
    assert cpu.model is not None and cpu.model.device == "cpu" and cpu.resources.gpu == 0


def test_step_bench_in_process_baseline_refuses_a_device_this_onnx_runtime_cannot_run(tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA: the baseline would run on it")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert _in_process(path, 2, InProcessRun(1, 1, False), 0.05).items_per_s > 0
    with pytest.raises(SystemExit, match="install onnxruntime-gpu"):
        _in_process(path, 2, InProcessRun(1, 1, False), 0.05, device="cuda")
