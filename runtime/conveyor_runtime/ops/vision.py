"""Built-in vision ops, so a typical image pipeline needs no user code: image preprocessing and top-k labels.

Registered as ``image-preprocess`` (also ``preprocess``) and ``topk`` in `conveyor_runtime.ops.BUILTIN_OPS`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from ..errors import InvalidRequest, OpError
from .base import Arrays, Op, OpContext, RequestContext, TensorSpec

__all__ = ["Preprocess", "TopK"]


def _channel_values(config: dict[str, Any], key: str, default: float, channels: int) -> npt.NDArray[np.float32]:
    value = config.get(key, default)
    values = [float(v) for v in value] if isinstance(value, Sequence) and not isinstance(value, str) else [float(value)]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"config.{key}: needs 1 or {channels} values (one per channel), got {len(values)}")
    if key == "std" and any(v == 0 for v in values):
        raise ValueError(f"config.std: must not contain 0, got {values}")
    return np.asarray(values, dtype=np.float32).reshape(1, channels, 1, 1)


def _positive_int(config: dict[str, Any], key: str, default: int) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"config.{key}: must be a positive integer, got {value!r}")
    return value


class Preprocess(Op):
    """Decode, resize, center-crop and normalize images into a float32 NCHW batch.

    Input (any name; one tensor): BYTES ``[N]`` of encoded PNG/JPEG/... images, or UINT8 ``[N,H,W]`` /
    ``[N,H,W,C]`` pixels. Output: FP32 ``[N,C,size,size]`` with values ``(pixel/255 - mean) / std``, or UINT8
    pixels with ``dtype: uint8``.

    Config keys:
      size       output side in pixels (default 224)
      resize     shorter side before the center crop (default: size)
      crop       center-crop after resizing the shorter side (default: true when `resize` is set); when
                 false the image is resized straight to size x size
      grayscale  one channel instead of RGB (default false)
      mean, std  per channel (or one value) on the 0..1 scale (default 0 and 1)
      dtype      float32 (default: normalized as above) or uint8: raw 0..255 pixels, NCHW, a quarter of the
                 bytes on the wire; the model then normalizes (conveyor_runtime.models.resnet: input_dtype uint8)
      input      input name reported in metadata (default "image"; any name is accepted)
      output     output name (default "image")
    Undecodable bytes fail that request alone: INVALID_ARGUMENT with reason IMAGE_DECODE.
    """

    any_input_name: ClassVar[bool] = True

    def init(self, config: dict[str, Any], context: OpContext) -> None:
        known = {"size", "resize", "crop", "grayscale", "mean", "std", "dtype", "input", "output"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"config: unknown key(s) {unknown}; known: {sorted(known)}")
        self.size = _positive_int(config, "size", 224)
        self.resize = _positive_int(config, "resize", self.size)
        self.crop = bool(config.get("crop", "resize" in config))
        self.grayscale = bool(config.get("grayscale", False))
        self.channels = 1 if self.grayscale else 3
        self.mean = _channel_values(config, "mean", 0.0, self.channels)
        self.std = _channel_values(config, "std", 1.0, self.channels)
        scale = (1.0 / (255.0 * self.std)).reshape(-1, 1)
        offset = (self.mean / self.std).reshape(-1, 1)
        levels = np.arange(256, dtype=np.float32)
        self._table = (levels[None, :] * scale - offset).astype(np.float32)
        self.input_name = str(config.get("input", "image"))
        self.output_name = str(config.get("output", "image"))
        self.inputs = [TensorSpec(self.input_name, "BYTES", None, also=("UINT8",))]
        self.dtype = str(config.get("dtype", "float32"))
        if self.dtype not in ("float32", "uint8"):
            raise ValueError(f"config.dtype: must be float32 or uint8, got {self.dtype!r}")
        if self.dtype == "uint8" and ("mean" in config or "std" in config):
            raise ValueError("config.mean/std: uint8 output is not normalized; normalize in the model instead")
        datatype = "UINT8" if self.dtype == "uint8" else "FP32"
        self.outputs = [TensorSpec(self.output_name, datatype, (-1, self.channels, self.size, self.size))]

    def preprocess(self, inputs: Arrays, request: RequestContext) -> Arrays:
        (name, array), = inputs.items()
        if array.dtype == np.object_:
            pixels = self._decode_all(name, array)
        else:
            pixels = self._pixels_from_array(name, array)
        if self.dtype == "uint8":
            return {self.output_name: np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))}
        return {self.output_name: self._normalize(pixels)}

    # --- helpers ----------------------------------------------------------------------------------

    def _decode_all(self, name: str, array: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise InvalidRequest(f"input {name!r}: BYTES images must have shape [N] (one encoded image per row), got {list(array.shape)}")
        out = np.empty((len(array), self.size, self.size, self.channels), dtype=np.uint8)
        for row, data in enumerate(array):
            try:
                with Image.open(io.BytesIO(bytes(data))) as image:
                    # JPEG can decode at 1/2, 1/4 or 1/8 scale: far cheaper for camera frames, never below target.
                    image.draft("L" if self.grayscale else "RGB", self._scaled_size(*image.size))
                    image.load()
                    converted = image.convert("L" if self.grayscale else "RGB")
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                raise OpError(
                    f"input {name!r} row {row}: cannot decode the image ({exc}); send PNG or JPEG bytes",
                    reason="IMAGE_DECODE",
                ) from None
            out[row] = self._fit(converted).reshape(self.size, self.size, self.channels)
        return out

    def _pixels_from_array(self, name: str, array: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
        if array.dtype != np.uint8:
            raise InvalidRequest(f"input {name!r}: pixels must be UINT8, got {array.dtype}")
        if array.ndim == 3:
            array = array[..., None]
        if array.ndim != 4 or array.shape[3] not in (1, 3, 4):
            raise InvalidRequest(
                f"input {name!r}: UINT8 images must have shape [N,H,W] or [N,H,W,C] with C in 1, 3, 4; got {list(array.shape)}"
            )
        n, height, width, channels = array.shape
        if height == width == self.size and channels == self.channels:
            return array
        if height == width == self.size and channels != self.channels and not self.grayscale:
            return np.repeat(array[..., :1], 3, axis=3) if channels == 1 else np.ascontiguousarray(array[..., :3])
        out = np.empty((n, self.size, self.size, self.channels), dtype=np.uint8)
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
        for row in range(n):
            pixels = array[row, :, :, 0] if channels == 1 else array[row]
            image = Image.fromarray(np.ascontiguousarray(pixels), mode=mode).convert("L" if self.grayscale else "RGB")
            out[row] = self._fit(image).reshape(self.size, self.size, self.channels)
        return out

    def _scaled_size(self, width: int, height: int) -> tuple[int, int]:
        """The image's size after resizing, before the center crop (or the output size without crop)."""
        if not self.crop:
            return self.size, self.size
        scale = self.resize / min(width, height)
        return max(self.size, round(width * scale)), max(self.size, round(height * scale))

    def _fit(self, image: Image.Image) -> npt.NDArray[np.uint8]:
        width, height = image.size
        if not self.crop:
            if image.size != (self.size, self.size):
                image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
        new_w, new_h = self._scaled_size(width, height)
        left, top = (new_w - self.size) // 2, (new_h - self.size) // 2
        if (new_w, new_h) == (width, height):
            return np.asarray(image.crop((left, top, left + self.size, top + self.size)), dtype=np.uint8)
        # Resize only the crop window (the same pixels as resize-then-crop, at a fraction of the work).
        sx, sy = new_w / width, new_h / height
        box = (left / sx, top / sy, (left + self.size) / sx, (top + self.size) / sy)
        return np.asarray(image.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box), dtype=np.uint8)

    def _normalize(self, pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        # A 256-entry table per channel turns the uint8 -> (x/255 - mean)/std pass into one gather.
        out = np.empty((pixels.shape[0], self.channels, self.size, self.size), dtype=np.float32)
        for channel in range(self.channels):
            np.take(self._table[channel], pixels[..., channel], out=out[:, channel])
        return out


class TopK(Op):
    """The k best classes of each row: softmax (optional), then scores, class indices and labels.

    Input: the step's single tensor, whatever its name, ``[N,classes]`` (FP32, FP16 or FP64).
    Outputs: ``scores`` FP32 ``[N,k]`` (best first), ``indices`` INT64 ``[N,k]`` and, when labels
    are given, ``labels`` BYTES ``[N,k]``.

    Config keys:
      k        how many classes per row (default 5)
      softmax  apply softmax before ranking (default true; false keeps the raw values as scores)
      labels   a list of class names, or a file (relative to the manifest's directory) with one per line
      input    input name reported in metadata (default "logits"; any name is accepted)
    """

    any_input_name: ClassVar[bool] = True

    def init(self, config: dict[str, Any], context: OpContext) -> None:
        known = {"k", "softmax", "labels", "input"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"config: unknown key(s) {unknown}; known: {sorted(known)}")
        self.k = _positive_int(config, "k", 5)
        self.softmax = bool(config.get("softmax", True))
        labels = config.get("labels")
        self.labels: list[str] | None = None
        if isinstance(labels, str):
            path = context.resolve(labels)
            try:
                self.labels = [line.strip() for line in path.read_text().splitlines()]
            except OSError as exc:
                raise ValueError(f"config.labels: cannot read {path}: {exc.strerror}") from None
            while self.labels and not self.labels[-1]:
                self.labels.pop()
        elif isinstance(labels, Sequence):
            self.labels = [str(label) for label in labels]
        elif labels is not None:
            raise ValueError(f"config.labels: must be a list of names or a file path, got {type(labels).__name__}")
        self._label_table = np.asarray(self.labels or [], dtype=object)
        self.inputs = [TensorSpec(str(config.get("input", "logits")), "FP32", (-1, -1), also=("FP16", "FP64"))]
        self.outputs = [TensorSpec("scores", "FP32", (-1, self.k)), TensorSpec("indices", "INT64", (-1, self.k))]
        if self.labels is not None:
            self.outputs.append(TensorSpec("labels", "BYTES", (-1, self.k)))

    def preprocess(self, inputs: Arrays, request: RequestContext) -> Arrays:
        (name, array), = inputs.items()
        classes = int(np.prod(array.shape[1:], dtype=np.int64)) if array.ndim > 1 else 0
        if classes < self.k:
            raise InvalidRequest(f"input {name!r}: has {classes} classes per row but topk k={self.k}; lower `k`")
        return {"x": array.reshape(len(array), classes)}

    def process(self, batch: Arrays) -> Arrays:
        x = batch["x"].astype(np.float32, copy=False)
        if self.softmax:
            x = np.exp(x - x.max(axis=1, keepdims=True))
            x /= x.sum(axis=1, keepdims=True)
        k = self.k
        top = np.argpartition(-x, k - 1, axis=1)[:, :k] if k < x.shape[1] else np.tile(np.arange(x.shape[1]), (len(x), 1))
        top_scores = np.take_along_axis(x, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        indices = np.take_along_axis(top, order, axis=1).astype(np.int64)
        outputs: Arrays = {"scores": np.take_along_axis(top_scores, order, axis=1).astype(np.float32), "indices": indices}
        if self.labels is not None:
            outputs["labels"] = self._labels_for(indices)
        return outputs

    def _labels_for(self, indices: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        table = self._label_table
        if indices.size and int(indices.max()) >= len(table):
            table = np.asarray(list(table) + [str(i) for i in range(len(table), int(indices.max()) + 1)], dtype=object)
        return table[indices]
