"""The operator reads its step pods: a container that cannot start makes the pipeline Degraded with its own words.

No kubelet runs here, so the test writes the pod status a kubelet would for a crashing container; the real thing
runs in tests/e2e/test_degraded.py. The resync never runs: only the pod watch can explain what the test sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner

from conveyor_operator.labels import child_selector
from tests.support.operator_fixtures import (  # noqa: F401 - fixtures
    NO_RESYNC_S,
    WATCH_TIMEOUT_S,
    Kube,
    kube,
    namespace,
    pipeline_body,
    pipeline_crd,
    running_operator,
    wait_for,
)

pytestmark = pytest.mark.controlplane

ERROR = "ModelLoadError: model file /var/lib/conveyor/absent.onnx does not exist; check `model.path` or add `model.build`"


@pytest.fixture(scope="module")
def watching_operator(pipeline_crd: dict[str, Any]) -> Iterator[KopfRunner]:
    with running_operator(NO_RESYNC_S) as runner:
        yield runner


def _step_pod(kube: Kube, namespace: str, deployment: str, controllers: bool) -> str:
    """A pod of the Deployment: the ReplicaSet's when a controller-manager runs, else one made with its labels."""
    template = kube.apps.read_namespaced_deployment(deployment, namespace).spec.template
    selector = ",".join(f"{k}={v}" for k, v in kube.apps.read_namespaced_deployment(deployment, namespace).spec.selector.match_labels.items())
    if controllers:
        pods = wait_for(lambda: kube.core.list_namespaced_pod(namespace, label_selector=selector).items, f"a pod of {deployment}")
        return str(pods[0].metadata.name)
    pod = {"metadata": {"name": f"{deployment}-0", "labels": template.metadata.labels},
           "spec": {"containers": [{"name": "step", "image": "conveyor:test"}]}}
    kube.core.create_namespaced_pod(namespace, pod)
    return f"{deployment}-0"


def _container_status(**state: Any) -> dict[str, Any]:
    return {"status": {"phase": "Running", "containerStatuses": [
        {"name": "step", "image": "conveyor:test", "imageID": "", "restartCount": 2, **state}]}}


def test_operator_reports_a_crashing_step_container_as_degraded_with_its_termination_message(
    kube: Kube, namespace: str, watching_operator: Any, control_plane: Any
) -> None:
    kube.create_pipeline(namespace, pipeline_body("crash", {"name": "pre", "op": "identity"}, {"name": "enc", "op": "topk"}))
    wait_for(lambda: kube.names(namespace, "Deployment", child_selector("crash")) == {"crash-pre", "crash-enc", "crash-gateway"},
             "crash's Deployments")
    wait_for(lambda: kube.condition(namespace, "crash", "Degraded").get("status") == "False", "Degraded=False at first")
    pod = _step_pod(kube, namespace, "crash-enc", control_plane.controller_manager_running)

    kube.core.patch_namespaced_pod_status(pod, namespace, _container_status(
        ready=False,
        state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting failed container"}},
        lastState={"terminated": {"exitCode": 1, "reason": "Error", "message": ERROR,
                                  "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:01Z"}},
    ))
    degraded = wait_for(lambda: (c := kube.condition(namespace, "crash", "Degraded")).get("status") == "True" and c,
                        "Degraded=True from the pod's container status", timeout=WATCH_TIMEOUT_S)
    assert degraded["reason"] == "StepFailing"
    assert degraded["message"] == f"step 'enc': pod {pod}: container step: CrashLoopBackOff, last exit code 1: {ERROR}"
    assert kube.condition(namespace, "crash", "Ready")["reason"] == "StepFailing"
    wait_for(lambda: [e for e in kube.events(namespace, "crash") if e.reason == "StepFailing" and ERROR in e.message],
             "a StepFailing event quoting the container")

    kube.core.patch_namespaced_pod_status(pod, namespace, _container_status(
        ready=True, started=True, state={"running": {"startedAt": "2026-01-01T00:01:00Z"}}))
    wait_for(lambda: kube.condition(namespace, "crash", "Degraded").get("status") == "False",
             "Degraded=False once the container runs", timeout=WATCH_TIMEOUT_S)
