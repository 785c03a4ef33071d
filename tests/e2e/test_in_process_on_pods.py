"""In-process edges on real pods (issue 11): a step with `inProcessWith` gets no pods of its own; every pod of its host
serves it, found through the step's own Service name, and the two hand tensors over in memory. Scaling the host
scales both and restarts no pod; answers and status stay right throughout."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.fixtures_pods import conveyor, conveyor_image, helm  # noqa: F401 - fixtures
from tests.e2e.served import ranked_check, ranked_manifest, ready_pipeline, serving, snapshot, step_pods
from tests.support.pods import Pipeline, Release, kubectl_json, wait_for

WAIT_S = 120.0


def _hosted_manifest() -> dict[str, Any]:
    """`relay` (identity) in the processes of `rank` (topk, 2 replicas)."""
    manifest = ranked_manifest("hosted")
    manifest["spec"]["steps"][0]["inProcessWith"] = "rank"
    return manifest


@pytest.fixture(scope="module")
def hosted(conveyor: Release) -> Iterator[Pipeline]:
    with ready_pipeline(conveyor, _hosted_manifest(), "e2e-hosted") as pipeline:
        yield pipeline


def _served_here(pipeline: Pipeline, step: str) -> list[float]:
    """Requests answered OK by `step` on each of rank's pods (from the pods' own metrics)."""
    return [pipeline.metric(pod, "conveyor_step_requests_total", step=step, code="OK") for pod in step_pods(pipeline, "rank")]


def test_an_in_process_step_runs_in_its_hosts_pods_and_scales_with_them(hosted: Pipeline) -> None:
    assert set(hosted.deployments()) == {"hosted-rank", "hosted-gateway"}, "relay has no Deployment of its own"
    assert {pod.labels.get("conveyor.dev/step") for pod in hosted.pods(component="step")} == {"rank"}
    service = kubectl_json(hosted.cluster, "get", "service", "hosted-relay", "-n", hosted.namespace)
    assert service["spec"]["selector"]["conveyor.dev/step"] == "rank", "relay's name resolves to rank's pods"
    env = {e["name"]: e.get("value") for e in hosted.deployments()["hosted-rank"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert '"name":"relay"' in (env.get("CONVEYOR_IN_PROCESS_STEPS") or ""), env
    status = hosted.get()["status"]
    steps = {s["name"]: s for s in status["steps"]}
    assert steps["relay"]["inProcessWith"] == "rank" and steps["relay"]["ready"] == steps["rank"]["ready"] == 2

    load = serving(hosted, ranked_check)
    try:
        start = load.now()
        wait_for(lambda: all(n > 0 for n in _served_here(hosted, "relay")) or None, WAIT_S, "relay answered on each rank pod")
        for pod in step_pods(hosted, "rank"):  # relay hands its outputs to rank in memory: no gRPC call between them
            assert hosted.metric(pod, "conveyor_step_forwarded_total", to="rank") == 0
            assert hosted.metric(pod, "conveyor_step_requests_total", step="rank", code="OK") > 0
        before = snapshot(hosted)
        hosted.patch([{"op": "replace", "path": "/spec/steps/1/replicas", "value": 3}])
        wait_for(lambda: len([p for p in step_pods(hosted, "rank") if p.ready]) == 3 or None, WAIT_S, "3 ready rank pods")
        hosted.wait_ready(timeout=WAIT_S)
        new = [p for p in step_pods(hosted, "rank") if p.name not in before]
        assert len(new) == 1
        wait_for(
            lambda: hosted.metric(new[0], "conveyor_step_requests_total", step="relay", code="OK") > 0 or None,
            WAIT_S,
            "relay requests answered by the new rank pod",
        )
        after = snapshot(hosted)
        assert {n: (p.uid, p.restarts) for n, p in after.items() if n in before} == {
            n: (p.uid, p.restarts) for n, p in before.items()
        }, "scaling the host replaced or restarted a pod"
        assert set(hosted.deployments()) == {"hosted-rank", "hosted-gateway"}
        steps = {s["name"]: s for s in hosted.get()["status"]["steps"]}
        assert steps["relay"]["ready"] == steps["rank"]["ready"] == 3
        end = load.now()
    finally:
        load.stop()
    print(f"load: {load.summary(start, end)}")
    assert not load.failures(start, end), load.summary(start, end)
