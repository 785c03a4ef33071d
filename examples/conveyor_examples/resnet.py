"""ResNet-18/34/50-shaped image classifiers with seeded random weights, built with the onnx helper API.

The weights mean nothing; the compute (convolutions, residual adds, shapes) is that of the real networks,
which is what serving benchmarks and tests need. Batch norm is folded into the convolutions' biases.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["LAYOUTS", "build"]

#: depth -> (block kind, blocks per stage)
LAYOUTS: dict[int, tuple[str, list[int]]] = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
}


class _Graph:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True, gain: float = 1.0) -> str:
        w = self.name("w")
        b = self.name("b")
        std = gain * np.sqrt(2.0 / (cin * k * k))
        self.weights.append(numpy_helper.from_array((self.rng.standard_normal((cout, cin, k, k)) * std).astype(np.float32), w))
        self.weights.append(numpy_helper.from_array(np.zeros(cout, dtype=np.float32), b))
        y = self.name("conv")
        self.nodes.append(
            helper.make_node("Conv", [x, w, b], [y], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        )
        return self.relu(y) if relu else y

    def relu(self, x: str) -> str:
        y = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [y]))
        return y

    def add(self, a: str, b: str) -> str:
        y = self.name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [y]))
        return y


def build(
    path: Path,
    depth: int = 50,
    image_size: int = 224,
    num_classes: int = 1000,
    seed: int = 0,
    fixed_batch: int | None = None,
    input_dtype: str = "float32",
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> Path:
    """Write a ResNet-`depth` classifier: input `image` [N,3,S,S] -> output `logits` float32 [N,classes].

    `fixed_batch` gives the model a fixed batch dimension (for `maxBatchSize: 0` steps); default is dynamic.
    `input_dtype="uint8"` takes raw 0..255 pixels and normalizes in the graph, ``(x/255 - mean) / std``, so
    a quarter of the bytes travel from the preprocess step (its ``dtype: uint8``).
    """
    if depth not in LAYOUTS:
        raise ValueError(f"depth must be one of {sorted(LAYOUTS)}, got {depth}")
    if input_dtype not in ("float32", "uint8"):
        raise ValueError(f"input_dtype must be float32 or uint8, got {input_dtype!r}")
    kind, blocks = LAYOUTS[depth]
    g = _Graph(seed)
    x = "image"
    if input_dtype == "uint8":
        scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float32))).reshape(1, 3, 1, 1)
        offset = (np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)).reshape(1, 3, 1, 1)
        g.weights.append(numpy_helper.from_array(scale.astype(np.float32), "norm_scale"))
        g.weights.append(numpy_helper.from_array(offset.astype(np.float32), "norm_offset"))
        g.nodes.append(helper.make_node("Cast", ["image"], ["image_f"], to=TensorProto.FLOAT))
        g.nodes.append(helper.make_node("Mul", ["image_f", "norm_scale"], ["image_scaled"]))
        g.nodes.append(helper.make_node("Sub", ["image_scaled", "norm_offset"], ["image_norm"]))
        x = "image_norm"
    x = g.conv(x, 3, 64, 7, stride=2)
    pooled = g.name("pool")
    g.nodes.append(helper.make_node("MaxPool", [x], [pooled], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x, channels = pooled, 64
    expansion = 4 if kind == "bottleneck" else 1
    for stage, count in enumerate(blocks):
        width = 64 * 2**stage
        for index in range(count):
            stride = 2 if stage > 0 and index == 0 else 1
            out = width * expansion
            shortcut = x if stride == 1 and channels == out else g.conv(x, channels, out, 1, stride, relu=False)
            if kind == "bottleneck":
                y = g.conv(x, channels, width, 1)
                y = g.conv(y, width, width, 3, stride)
                y = g.conv(y, width, out, 1, relu=False, gain=0.2)
            else:
                y = g.conv(x, channels, width, 3, stride)
                y = g.conv(y, width, out, 3, relu=False, gain=0.2)
            x = g.relu(g.add(y, shortcut))
            channels = out
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    g.nodes.append(helper.make_node("Flatten", ["gap"], ["features"], axis=1))
    fc_w = (g.rng.standard_normal((channels, num_classes)) * np.sqrt(1.0 / channels)).astype(np.float32)
    g.weights.append(numpy_helper.from_array(fc_w, "fc_w"))
    g.weights.append(numpy_helper.from_array(np.zeros(num_classes, dtype=np.float32), "fc_b"))
    g.nodes.append(helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"]))
    batch: int | str = fixed_batch if fixed_batch is not None else "batch"
    graph = helper.make_graph(
        g.nodes,
        f"resnet{depth}",
        [
            helper.make_tensor_value_info(
                "image", TensorProto.UINT8 if input_dtype == "uint8" else TensorProto.FLOAT, [batch, 3, image_size, image_size]
            )
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, num_classes])],
        initializer=g.weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="conveyor")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
