"""What the scaling and fault tests share: a small two-step pipeline that batches, load against its gateway, and
snapshots of its pods and Deployments to compare before and after a change."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest

from tests.support.cluster import ClusterError
from tests.support.load import Check, Load
from tests.support.pods import Pipeline, Pod, Release, apply_pipeline, fresh_namespace, wait_for

__all__ = ["INPUTS", "RATE", "ranked", "ranked_check", "ranked_manifest", "ready_pipeline", "serving", "snapshot", "step_pods", "templates"]

#: Requests per second of the background load (the node has 2 cores shared with the control plane and the tests).
RATE = 40.0
INPUTS = {"x": np.array([[1.0, 4.0, 2.0, 3.0]], dtype=np.float32)}


def ranked_manifest(name: str) -> dict[str, Any]:
    """`relay` (identity) then `rank` (topk, a batching op): the answer to INPUTS is indices [[1, 3]]."""
    return {
        "apiVersion": "conveyor.dev/v1alpha1",
        "kind": "InferencePipeline",
        "metadata": {"name": name},
        "spec": {
            "steps": [
                {"name": "relay", "op": "identity"},
                {
                    "name": "rank",
                    "op": "topk",
                    "config": {"k": 2, "softmax": False},
                    "replicas": 2,
                    "batching": {"maxBatchSize": 8, "maxQueueDelayMicroseconds": 500},
                },
            ]
        },
    }


def ranked_check(outputs: Mapping[str, np.ndarray]) -> str | None:
    indices = outputs.get("indices")
    if indices is None or indices.tolist() != [[1, 3]]:
        return f"expected indices [[1, 3]], got {dict(outputs)!r}"[:300]
    return None


@contextlib.contextmanager
def ready_pipeline(conveyor: Release, manifest: dict[str, Any], prefix: str) -> Iterator[Pipeline]:
    """`manifest` applied, Ready, in a namespace of its own (deleted afterwards, not waited for)."""
    namespace = fresh_namespace(conveyor.cluster, prefix)
    try:
        pipeline = apply_pipeline(conveyor.cluster, manifest, namespace)
        pipeline.wait_ready(timeout=180)
        yield pipeline
    finally:
        try:
            conveyor.cluster.kubectl("delete", "namespace", namespace, "--wait=false")
        except ClusterError:
            pass


@pytest.fixture(scope="module")
def ranked(conveyor: Release) -> Iterator[Pipeline]:
    """The pipeline, Ready, in a namespace of its own for the module."""
    with ready_pipeline(conveyor, ranked_manifest("ranked"), "e2e-ranked") as pipeline:
        yield pipeline


def serving(pipeline: Pipeline, check: Check = ranked_check) -> Load:
    """Steady load against the pipeline's gateway Service, started once a first request was answered."""
    address = pipeline.grpc_address()

    def answered() -> bool:
        with Load(address, pipeline.name, INPUTS, rate=10, check=check, timeout_s=5) as probe:
            wait_for(lambda: probe.outcomes() or None, 30, "a first answer")
        return all(o.ok for o in probe.outcomes())

    wait_for(answered, 60, f"{pipeline.name} to answer through its gateway")
    return Load(address, pipeline.name, INPUTS, rate=RATE, check=check, timeout_s=10, reconnect_backoff_s=1.0).start()


def snapshot(pipeline: Pipeline) -> dict[str, Pod]:
    """Every pod of the pipeline that is not being deleted, by name."""
    return {pod.name: pod for pod in pipeline.pods() if not pod.deleting}


def step_pods(pipeline: Pipeline, step: str) -> list[Pod]:
    return [pod for pod in pipeline.pods(component="step", step=step) if not pod.deleting]


def templates(pipeline: Pipeline) -> dict[str, tuple[Any, int]]:
    """Each Deployment's pod template and generation (a template change rolls pods)."""
    return {name: (d["spec"]["template"], d["metadata"]["generation"]) for name, d in pipeline.deployments().items()}
