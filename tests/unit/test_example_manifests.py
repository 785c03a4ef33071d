"""The examples' demo models come from the examples package and are built in the examples image, never by the runtime:
a step that builds its model runs on `conveyor-examples:dev` (the Dockerfile's `examples` target), and every other pod
keeps the production image."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor_runtime.errors import ModelLoadError
from conveyor_runtime.spec import load_manifest
from conveyor_runtime.step.model_file import resolve_builder

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((REPO / "examples").glob("*/pipeline*.yaml"))
#: What scripts/build-image.sh loads into a node for the Dockerfile's `examples` target.
EXAMPLES_IMAGE = "conveyor-examples:dev"


@pytest.mark.parametrize("path", MANIFESTS, ids=[str(p.relative_to(REPO)) for p in MANIFESTS])
def test_example_manifests_build_models_only_in_the_examples_image(path: Path) -> None:
    spec = load_manifest(path).spec
    for step in spec.steps:
        builds = step.model is not None and step.model.build is not None
        assert (step.image == EXAMPLES_IMAGE) == builds, (step.name, step.image)
    assert spec.image is None and spec.gateway.image is None, "only the model steps need the examples image"


def test_example_manifests_name_builders_from_the_examples_package() -> None:
    builders = {
        step.model.build
        for path in MANIFESTS
        for step in load_manifest(path).spec.steps
        if step.model is not None and step.model.build is not None
    }
    assert builders == {"conveyor_examples.resnet:build", "conveyor_examples.digits:build"}
    assert all(callable(resolve_builder(reference)) for reference in builders)


def test_a_builder_that_cannot_be_imported_says_which_image_has_it() -> None:
    with pytest.raises(ModelLoadError, match=r"cannot be imported: .*conveyor-examples:dev.*model\.uri"):
        resolve_builder("conveyor_nosuch.builders:build")
