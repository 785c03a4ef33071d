"""A real digit classifier: an MLP trained on scikit-learn's bundled 8x8 digits, exported with the onnx helper API.

Input `image` float32 [N,1,8,8] with pixels in 0..1; output `logits` float32 [N,10]. Training is seeded and
takes about a second. Needs the `examples` extra (scikit-learn): the examples image has it, the production image does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["build", "load_split"]


def load_split(seed: int = 0) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]:
    """(train images, train labels, held-out images, held-out labels); images are uint8 [N,8,8] in 0..255."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise RuntimeError(
            "the digits example needs scikit-learn: pip install -e '.[examples]' here, or in a cluster run the step on "
            "the examples image (image: conveyor-examples:dev)"
        ) from exc
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
    return x_train, y_train, x_test, y_test


def build(path: Path, hidden: int = 64, seed: int = 0) -> Path:
    """Train the MLP on the training split and write it as ONNX to `path`."""
    from sklearn.neural_network import MLPClassifier

    x_train, y_train, _, _ = load_split(seed)
    clf = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=500, random_state=seed)
    clf.fit(x_train.reshape(len(x_train), -1).astype(np.float32) / 255.0, y_train)
    (w1, w2), (b1, b2) = clf.coefs_, clf.intercepts_
    weights = [
        numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(w1.astype(np.float32), "w1"),
        numpy_helper.from_array(b1.astype(np.float32), "b1"),
        numpy_helper.from_array(w2.astype(np.float32), "w2"),
        numpy_helper.from_array(b2.astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["h_relu"]),
        helper.make_node("Gemm", ["h_relu", "w2", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="conveyor")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
