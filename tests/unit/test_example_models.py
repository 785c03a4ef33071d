"""The models the project builds: uint8-input ResNets normalize in the graph exactly like Preprocess does."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from conveyor_examples import resnet
from conveyor_runtime.ops import OpContext, RequestContext
from conveyor_runtime.ops.vision import Preprocess

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _preprocess(config: dict[str, object], images: np.ndarray) -> np.ndarray:
    op = Preprocess()
    op.init(config, OpContext(step="p", base_dir=Path(".")))
    return op.preprocess({"image": images}, RequestContext("r"))["image"]


def test_models_resnet_uint8_input_matches_float_input_after_preprocess(tmp_path: Path) -> None:
    float_model = resnet.build(tmp_path / "f.onnx", depth=18, image_size=32, num_classes=6)
    uint8_model = resnet.build(tmp_path / "u.onnx", depth=18, image_size=32, num_classes=6, input_dtype="uint8", mean=MEAN, std=STD)
    frames = np.empty(2, dtype=object)
    rng = np.random.default_rng(3)
    for row in range(2):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
        frames[row] = buffer.getvalue()
    normalized = _preprocess({"size": 32, "resize": 36, "mean": MEAN, "std": STD}, frames)
    pixels = _preprocess({"size": 32, "resize": 36, "dtype": "uint8"}, frames)
    assert pixels.dtype == np.uint8 and pixels.shape == normalized.shape == (2, 3, 32, 32)

    expected = ort.InferenceSession(str(float_model)).run(None, {"image": normalized})[0]
    got = ort.InferenceSession(str(uint8_model)).run(None, {"image": pixels})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_models_preprocess_uint8_refuses_mean_and_std() -> None:
    with pytest.raises(ValueError, match="normalize in the model"):
        _preprocess({"size": 8, "dtype": "uint8", "mean": 0.5}, np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="config.dtype"):
        _preprocess({"size": 8, "dtype": "int16"}, np.zeros((1, 8, 8), np.uint8))
