"""Fixtures for tests on real pods: helm, the image loaded into the tier's cluster, the chart installed, pipelines.

Import them into a test module (``from tests.e2e.fixtures_pods import conveyor, make_pipeline  # noqa: F401``).
The session-wide work behind them (building helm and the image, ``helm install``) is memoized in
tests/support/pods.py, so modules that each import these fixtures still share one install.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Cluster, ClusterError
from tests.support.pods import Pipeline, Release, apply_pipeline, ensure_image, ensure_release, fresh_namespace, helm_binary

__all__ = ["MakePipeline", "conveyor", "conveyor_image", "helm", "make_pipeline"]

MakePipeline = Callable[..., Pipeline]


@pytest.fixture(scope="session")
def helm() -> Path:
    """The helm binary (scripts/install-helm.sh; built from the Go module proxy once, then cached)."""
    return helm_binary()


@pytest.fixture(scope="session")
def conveyor_image(cluster: Cluster) -> str:
    """conveyor:dev, built from the checkout's Dockerfile and loaded into the cluster (scripts/build-image.sh)."""
    return ensure_image(cluster)


@pytest.fixture(scope="session")
def conveyor(cluster: Cluster, conveyor_image: str, helm: Path) -> Release:
    """charts/conveyor installed into conveyor-system with conveyor:dev; its operator pod is Ready."""
    return ensure_release(cluster)


@pytest.fixture
def make_pipeline(conveyor: Release) -> Iterator[MakePipeline]:
    """`make_pipeline(manifest, name=None, namespace=None)`: apply an InferencePipeline into a fresh namespace
    (named after the pipeline) or `namespace`; the namespaces it made are deleted afterwards (not waited for)."""
    made: list[str] = []

    def make(manifest: Path | str | dict[str, Any], *, name: str | None = None, namespace: str | None = None) -> Pipeline:
        if namespace is None:
            namespace = fresh_namespace(conveyor.cluster, f"e2e-{name or 'pl'}")
            made.append(namespace)
        return apply_pipeline(conveyor.cluster, manifest, namespace, name)

    yield make
    for namespace in made:
        try:
            conveyor.cluster.kubectl("delete", "namespace", namespace, "--wait=false")
        except ClusterError:
            pass
