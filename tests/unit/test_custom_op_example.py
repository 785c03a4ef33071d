"""examples/custom-op: its op package loads by the reference its manifest names and computes y = x * scale + shift."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conveyor_runtime.ops import OpContext, load_op
from conveyor_runtime.spec import load_manifest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom-op"


@pytest.fixture
def on_path() -> Iterator[None]:
    sys.path.insert(0, str(EXAMPLE))  # what `pip install examples/custom-op` gives
    try:
        yield
    finally:
        sys.path.remove(str(EXAMPLE))
        for name in [m for m in sys.modules if m.startswith("conveyor_custom_ops")]:
            del sys.modules[name]


def test_custom_op_example_runs_its_op_on_one_step_from_its_own_image(on_path: None) -> None:
    manifest = load_manifest(EXAMPLE / "pipeline.yaml")
    custom = [step for step in manifest.spec.steps if step.image]
    assert [step.name for step in custom] == ["affine"] and custom[0].op == "conveyor_custom_ops:Affine"
    op = load_op(custom[0].op)()
    op.init(dict(custom[0].config), OpContext(step="affine", base_dir=EXAMPLE))
    x = np.array([[1.0, -2.0], [0.5, 4.0]], dtype=np.float32)
    np.testing.assert_array_equal(op.process({"anything": x})["y"], x * 2.0 + 1.0)


def test_custom_op_example_refuses_an_unknown_config_key(on_path: None) -> None:
    op = load_op("conveyor_custom_ops:Affine")()
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['scael'\]"):
        op.init({"scael": 2}, OpContext(step="affine", base_dir=EXAMPLE))
