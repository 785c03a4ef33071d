"""Which pods an edit of the pipeline rolls: a step's own settings roll only that step; the graph rolls the gateway."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor_operator.render import Owner, render_children
from conveyor_runtime.spec import PipelineSpec

OWNER = Owner(name="demo", namespace="ml", uid="0000-1111")


def _data() -> dict[str, Any]:
    return {
        "steps": [
            {"name": "pre", "op": "preprocess", "config": {"size": 32}},
            {"name": "cls", "model": {"path": "models/m.onnx"}, "inputs": ["pre"]},
        ]
    }


def _templates(data: dict[str, Any]) -> dict[str, Any]:
    children = render_children(OWNER, PipelineSpec.model_validate(data))
    return {c["metadata"]["name"]: c["spec"]["template"] for c in children if c["kind"] == "Deployment"}


def _rolled(edit: Any) -> set[str]:
    data = _data()
    edit(data)
    before, after = _templates(_data()), _templates(data)
    return {name for name in before if before[name] != after[name]}


@pytest.mark.parametrize(
    ("what", "edit"),
    [
        ("a model's path", lambda d: d["steps"][1]["model"].update(path="models/other.onnx")),
        ("a model's instances", lambda d: d["steps"][1]["model"].update(instances=2)),
        ("an op's config", lambda d: d["steps"][0]["config"].update(size=64)),
        ("a step's op", lambda d: d["steps"][0].update(op="identity", config={})),
    ],
)
def test_render_a_steps_model_op_or_config_rolls_that_step_only(what: str, edit: Any) -> None:
    """The gateway reads a step's tensor names from the step at run time (again after the step's pods are
    replaced), so a step's own settings do not restart the gateway."""
    owner = "demo-cls" if "model" in what else "demo-pre"
    assert _rolled(edit) == {owner}, what


def test_render_a_graph_edit_rolls_the_gateway() -> None:
    assert _rolled(lambda d: d.update(output="pre")) == {"demo-gateway"}
    assert _rolled(lambda d: d.update(gateway={"defaultTimeoutSeconds": 5})) == {"demo-gateway"}
