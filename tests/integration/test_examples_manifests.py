"""Every manifest under examples/ loads, and its builders and label files exist (house rule 20)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from conveyor_runtime.spec import ExecutionPlan, load_manifest
from tests.support.pipeline_fixtures import REPO

MANIFESTS = sorted((REPO / "examples").glob("*/*.yaml"))


def test_examples_manifests_exist() -> None:
    assert {p.parent.name for p in MANIFESTS} >= {"digits", "defect-detection"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_examples_manifest_loads_and_plans(path: Path) -> None:
    manifest = load_manifest(path)
    plan = ExecutionPlan.from_manifest(manifest)
    assert plan.order[0] == plan.entry and plan.order[-1] == plan.output
    for step in manifest.spec.steps:
        labels = step.config.get("labels")
        if isinstance(labels, str):
            assert (path.parent / labels).is_file(), f"{step.name}: labels file {labels} is missing"
        if step.model is not None:
            assert step.model.build, f"{step.name}: examples build their models at first run"
            module, _, function = step.model.build.partition(":")
            assert callable(getattr(importlib.import_module(module), function))
            assert step.model.path.startswith("models/"), "built models live in <example>/models/ (git-ignored)"


def test_examples_model_paths_differ_per_depth() -> None:
    paths = {load_manifest(p).spec.steps[1].model.path for p in (REPO / "examples" / "defect-detection").glob("*.yaml")}  # type: ignore[union-attr]
    assert len(paths) == 2
