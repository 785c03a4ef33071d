"""`batching.policy` from the manifest to the batcher: its default, its validation, the step's env and the op loop."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor_runtime.errors import InvalidManifest
from conveyor_runtime.ops import load_op
from conveyor_runtime.spec import parse_manifest, step_from_env, step_to_env
from conveyor_runtime.step import OpLoop, StepMetrics, ignored_batching
from tests.support.step_fixtures import step_spec
from tests.unit.test_spec import MANIFEST, manifest_with

DOUBLE = "tests.support.step_fixtures:DoubleOp"
ONE_AT_A_TIME = "tests.support.unbatched_ops:OneAtATimeOp"


def test_batching_policy_defaults_to_work_conserving() -> None:
    assert parse_manifest(MANIFEST).spec.steps[1].batching.policy == "workConserving"


def test_batching_policy_rejects_an_unknown_value_naming_the_field_and_the_choices() -> None:
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(manifest_with(steps__1__batching__policy="eager"))
    assert [e.path for e in info.value.errors] == ["spec.steps[1].batching.policy"]
    assert "'workConserving'" in str(info.value) and "'fill'" in str(info.value)


def test_batching_policy_reaches_the_step_through_its_environment() -> None:
    step = parse_manifest(manifest_with(steps__1__batching__policy="fill")).spec.steps[1]
    assert step_from_env(step_to_env(step)).batching.policy == "fill"


@pytest.mark.parametrize("policy", ["workConserving", "fill"])
def test_batching_policy_is_the_op_loops_batcher_policy(tmp_path: Path, policy: str) -> None:
    spec = step_spec("s", op=DOUBLE, batching={"policy": policy})
    loop = OpLoop.load(spec, tmp_path, StepMetrics("s"))
    try:
        assert loop.batcher is not None and loop.batcher.policy == policy
    finally:
        loop.op.close()


def test_batching_policy_on_an_op_that_never_batches_is_named_as_ignored() -> None:
    spec = step_spec("s", op=ONE_AT_A_TIME, batching={"policy": "fill"})
    assert [e.path for e in ignored_batching(spec, load_op(ONE_AT_A_TIME))] == ["batching.policy"]


def test_batching_policy_work_conserving_warns_that_a_set_queue_delay_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING")
    for batching in ({"maxQueueDelayMicroseconds": 2000, "policy": "fill"}, {}):
        OpLoop.load(step_spec("s", op=DOUBLE, batching=batching), tmp_path, StepMetrics("s")).op.close()
    assert "maxQueueDelayMicroseconds" not in caplog.text
    OpLoop.load(step_spec("s", op=DOUBLE, batching={"maxQueueDelayMicroseconds": 2000}), tmp_path, StepMetrics("s")).op.close()
    assert (
        "step s: batching.maxQueueDelayMicroseconds (2000) is not used with batching.policy workConserving; "
        "set policy: fill to wait for fuller batches, or remove it" in caplog.text
    )
