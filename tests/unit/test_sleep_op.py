"""FixedSleep: the known-capacity op of the autoscaling test echoes its input after its fixed sleep."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conveyor_benchmarks.sleep_op import FixedSleep
from conveyor_runtime.ops import OpContext


def test_fixed_sleep_echoes_its_one_input_as_y() -> None:
    op = FixedSleep()
    op.init({"seconds": 0.001}, OpContext(step="work", base_dir=Path(".")))
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(op.process({"whatever": x})["y"], x)


@pytest.mark.parametrize(("config", "message"), [({"seconds": 0}, "config.seconds"), ({"sleep": 1}, "unknown key")])
def test_fixed_sleep_refuses_bad_config_naming_the_key(config: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FixedSleep().init(config, OpContext(step="work", base_dir=Path(".")))
