"""`kubectl delete ipl` on a real node (issue 13, item 9): it removes every child, also while the operator is stopped,
because no finalizer holds the pipeline."""

from __future__ import annotations

from tests.e2e.fixtures_pods import MakePipeline, conveyor, conveyor_image, helm, make_pipeline  # noqa: F401 - fixtures
from tests.support.cluster import ClusterError
from tests.support.pods import Pipeline, Release, identity_manifest, wait_for

#: What a Ready two-step pipeline owns: per step a Deployment, its ReplicaSet and pod, a Service and its
#: EndpointSlice; the gateway's the same; and the graph ConfigMap.
CHILD_KINDS = {"ConfigMap", "Deployment", "EndpointSlice", "Pod", "ReplicaSet", "Service"}


def _ready_pipeline(make_pipeline: MakePipeline, name: str) -> tuple[Pipeline, set[str]]:
    pipeline = make_pipeline(identity_manifest(name), name=name)
    obj = pipeline.wait_ready(timeout=180)
    assert not obj["metadata"].get("finalizers"), obj["metadata"]
    children = pipeline.children()
    assert {child.split("/", 1)[0] for child in children} == CHILD_KINDS, children
    assert sum(child.startswith("Deployment/") for child in children) == 3, children  # two steps and the gateway
    return pipeline, children


def _gone(pipeline: Pipeline) -> bool:
    try:
        pipeline.get()
    except ClusterError as exc:
        if "NotFound" in str(exc):
            return True
        raise
    return False


def test_kubectl_delete_ipl_removes_every_child(make_pipeline: MakePipeline) -> None:
    pipeline, children = _ready_pipeline(make_pipeline, "doomed")
    pipeline.delete(wait=True, timeout=60)
    assert _gone(pipeline)
    wait_for(lambda: not pipeline.children(), 120, f"every child of {pipeline.name} to be deleted: {sorted(children)}")


def test_kubectl_delete_ipl_works_while_the_operator_is_stopped(
    conveyor: Release,
    make_pipeline: MakePipeline,
) -> None:
    pipeline, children = _ready_pipeline(make_pipeline, "orphaned")
    conveyor.scale_operator(0)
    try:
        pipeline.delete(wait=True, timeout=60)  # returns only once the object is gone: nothing holds it
        assert _gone(pipeline)
        # The garbage collector (kube-controller-manager) deletes the children through their owner references.
        wait_for(lambda: not pipeline.children(), 120, f"every child of {pipeline.name} to be deleted: {sorted(children)}")
    finally:
        conveyor.scale_operator(1)
