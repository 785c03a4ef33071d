"""Request validation against a step's declared inputs, before anything joins a batch."""

from __future__ import annotations

import numpy as np
import pytest

from conveyor_runtime.errors import InvalidRequest
from conveyor_runtime.ops import TensorSpec
from conveyor_runtime.step import validate_inputs


def test_validate_inputs_op_without_declared_inputs_takes_any_tensors() -> None:
    tensors = {"anything": np.zeros((2, 3), np.float32), "more": np.ones(2, np.int64)}
    assert validate_inputs("identity", [], tensors) == tensors


def test_validate_inputs_names_the_unknown_and_the_expected_input() -> None:
    specs = [TensorSpec("image", "FP32", (-1, 3))]
    with pytest.raises(InvalidRequest, match=r"unknown input 'x'; step 's' expects 'image'"):
        validate_inputs("s", specs, {"x": np.zeros((1, 3), np.float32)})
    with pytest.raises(InvalidRequest, match=r"input 'image': datatype INT64, expected FP32"):
        validate_inputs("s", specs, {"image": np.zeros((1, 3), np.int64)})
