"""Built-in vision ops (Preprocess, TopK) and the op registry, called directly like a step would."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conveyor_runtime.errors import InvalidRequest, OpError
from conveyor_runtime.ops import BUILTIN_OPS, Op, OpContext, RequestContext, load_op
from conveyor_runtime.ops.vision import Preprocess, TopK


def _op(cls: type[Op], config: dict[str, object], base_dir: Path = Path(".")) -> Op:
    op = cls()
    op.init(config, OpContext(step="s", base_dir=base_dir))
    return op


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_ops_registry_knows_the_builtins_and_import_references() -> None:
    assert load_op("image-preprocess") is Preprocess
    assert load_op("topk") is TopK
    assert load_op("conveyor_runtime.ops.vision:TopK") is TopK
    assert set(BUILTIN_OPS) >= {"image-preprocess", "topk"}
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        load_op("nope")
    with pytest.raises(ValueError, match="not a subclass"):
        load_op("conveyor_runtime.ops.vision:np")


def test_ops_preprocess_uint8_grayscale_digits() -> None:
    op = _op(Preprocess, {"size": 8, "grayscale": True})
    pixels = np.arange(2 * 64, dtype=np.uint8).reshape(2, 8, 8)
    out = op.preprocess({"whatever": pixels}, RequestContext("r"))["image"]
    assert out.shape == (2, 1, 8, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], pixels / 255.0, rtol=1e-6)
    assert op.outputs[0].shape == (-1, 1, 8, 8)


def test_ops_preprocess_decodes_resizes_crops_and_normalizes() -> None:
    op = _op(Preprocess, {"size": 4, "resize": 4, "mean": [0.5, 0.5, 0.5], "std": 0.5})
    image = np.zeros((8, 16, 3), dtype=np.uint8)
    image[:, 4:12] = 255  # a white band in the middle fills the center crop; the dark sides are cut
    batch = np.empty(2, dtype=object)
    batch[:] = [_png(image), _png(image)]
    out = op.preprocess({"image": batch}, RequestContext("r"))["image"]
    assert out.shape == (2, 3, 4, 4)
    assert out.min() >= -1.0 and out.max() <= 1.0
    np.testing.assert_allclose(out[0, :, :, 1:3], 1.0, atol=0.02)
    assert out[0].min() > 0.0  # (255/255 - 0.5) / 0.5 = 1 at the centre, nothing black left


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_ops_preprocess_matches_resize_then_center_crop(fmt: str) -> None:
    """The crop-window resize (and JPEG draft decoding) give the pixels of the textbook resize-then-crop."""
    op = _op(Preprocess, {"size": 56, "resize": 64})
    gradient = (np.add.outer(np.arange(240), np.arange(320)) % 256).astype(np.uint8)
    frame = np.stack([gradient, gradient[:, ::-1], np.full_like(gradient, 90)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format=fmt, quality=95)
    batch = np.empty(1, dtype=object)
    batch[:] = [buffer.getvalue()]
    out = op.preprocess({"image": batch}, RequestContext("r"))["image"][0]

    decoded = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    resized = decoded.resize((85, 64), Image.Resampling.BILINEAR)  # shorter side 240 -> 64
    expected = np.asarray(resized.crop((14, 4, 70, 60)), dtype=np.float32).transpose(2, 0, 1) / 255.0
    # within 2 levels on average (JPEG's scaled decode filters a little differently); a crop one pixel
    # off is about 5 levels away on this gradient
    assert np.abs(out - expected).mean() < 2 / 255


def test_ops_preprocess_bad_bytes_fail_with_image_decode() -> None:
    op = _op(Preprocess, {"size": 4})
    batch = np.empty(1, dtype=object)
    batch[:] = [b"not an image"]
    with pytest.raises(OpError, match=r"\[IMAGE_DECODE\].*row 0") as info:
        op.preprocess({"image": batch}, RequestContext("r"))
    assert info.value.status == "INVALID_ARGUMENT"


def test_ops_preprocess_rejects_bad_config_and_rank() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        _op(Preprocess, {"sise": 4})
    with pytest.raises(ValueError, match="config.std"):
        _op(Preprocess, {"std": [1, 2]})
    op = _op(Preprocess, {"size": 4})
    with pytest.raises(InvalidRequest, match="shape"):
        op.preprocess({"image": np.zeros((2, 4), dtype=np.uint8)}, RequestContext("r"))


def test_ops_topk_ranks_with_softmax_and_labels(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("zero\none\ntwo\nthree\n\n")
    op = _op(TopK, {"k": 2, "labels": "labels.txt"}, tmp_path)
    logits = np.array([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    prepared = op.preprocess({"logits": logits}, RequestContext("r"))
    out = op.process(prepared)
    np.testing.assert_array_equal(out["indices"], [[1, 3], [0, 1]])
    assert out["labels"].tolist() == [["one", "three"], ["zero", "one"]]
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out["scores"][0], expected[0, [1, 3]], rtol=1e-6)
    assert [o.name for o in op.outputs] == ["scores", "indices", "labels"]


def test_ops_topk_without_softmax_keeps_raw_scores_and_checks_k() -> None:
    op = _op(TopK, {"k": 3, "softmax": False})
    out = op.process(op.preprocess({"x": np.array([[1.0, 9.0, 5.0]], np.float32)}, RequestContext("r")))  # type: ignore[arg-type]
    np.testing.assert_array_equal(out["scores"], [[9.0, 5.0, 1.0]])
    assert "labels" not in out
    with pytest.raises(InvalidRequest, match="has 2 classes per row but topk k=3"):
        op.preprocess({"x": np.zeros((1, 2), np.float32)}, RequestContext("r"))
