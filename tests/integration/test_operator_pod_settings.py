"""The operator against a real kube-apiserver: `image:`, `pod:` settings and model sources reach the Deployments it
applies, and a pod setting the CRD accepts but a Deployment does not comes back as Degraded naming the child."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.operator_fixtures import (  # noqa: F401 - fixtures
    Kube,
    kube,
    namespace,
    operator,
    pipeline_body,
    pipeline_crd,
    wait_for,
)

pytestmark = pytest.mark.controlplane

POD = {
    "env": [{"name": "LOG_LEVEL", "value": "debug"}],
    "envFrom": [{"configMapRef": {"name": "settings"}}],
    "volumes": [{"name": "labels", "configMap": {"name": "labels"}}],
    "volumeMounts": [{"name": "labels", "mountPath": "/etc/labels", "readOnly": True}],
    "imagePullSecrets": [{"name": "registry"}],
    "serviceAccountName": "inference",
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}],
    "priorityClassName": "high",
}


def _pod_spec(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    deployment = wait_for(lambda: kube.deployment(namespace, name), f"Deployment {name}")
    spec: dict[str, Any] = kube.api_client.sanitize_for_serialization(deployment.spec.template.spec)
    return spec


def test_operator_applies_images_pod_settings_and_model_sources_to_the_deployments(
    kube: Kube, namespace: str, operator: Any
) -> None:
    body = pipeline_body(
        "src",
        {"name": "pre", "op": "identity", "image": "me/custom-ops:1", "pod": POD},
        {"name": "cls", "model": {"uri": "s3://models/m.onnx", "credentialsSecret": "s3", "cacheSizeLimit": "1Gi"}},
        {"name": "big", "model": {"uri": "pvc://trained/resnet/model.onnx"}},
        gateway={"image": "me/gateway:1", "pod": {"serviceAccountName": "edge"}},
    )
    kube.create_pipeline(namespace, body)

    pre = _pod_spec(kube, namespace, "src-pre")
    assert pre["containers"][0]["image"] == "me/custom-ops:1"
    assert pre["containers"][0]["env"][-1] == {"name": "LOG_LEVEL", "value": "debug"}
    assert pre["containers"][0]["envFrom"] == POD["envFrom"]
    assert pre["volumes"][-1] == {"name": "labels", "configMap": {"name": "labels", "defaultMode": 420}}
    assert (pre["serviceAccountName"], pre["priorityClassName"]) == ("inference", "high")
    assert pre["imagePullSecrets"] == [{"name": "registry"}]

    cls = _pod_spec(kube, namespace, "src-cls")
    (fetch,) = cls["initContainers"]
    assert fetch["name"] == "fetch" and fetch["command"] == ["conveyor", "fetch"] and fetch["image"] == cls["containers"][0]["image"]
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3"}}]
    assert {v["name"]: v for v in cls["volumes"]}["models"]["emptyDir"] == {"sizeLimit": "1Gi"}

    big = _pod_spec(kube, namespace, "src-big")
    assert "initContainers" not in big or not big["initContainers"]
    assert {v["name"]: v for v in big["volumes"]}["model-pvc"]["persistentVolumeClaim"] == {"claimName": "trained", "readOnly": True}

    gateway = _pod_spec(kube, namespace, "src-gateway")
    assert gateway["containers"][0]["image"] == "me/gateway:1" and gateway["serviceAccountName"] == "edge"


def test_operator_reports_a_pod_setting_a_deployment_refuses_as_degraded_naming_the_child(
    kube: Kube, namespace: str, operator: Any
) -> None:
    # The CRD's schema takes any string as a mount's volume name; a Deployment must name one of its pod's volumes.
    body = pipeline_body(
        "mnt",
        {"name": "pre", "op": "identity"},
        {"name": "post", "op": "identity", "pod": {"volumeMounts": [{"name": "nosuch", "mountPath": "/data"}]}},
    )
    kube.create_pipeline(namespace, body)

    def degraded() -> dict[str, Any] | None:
        condition = kube.condition(namespace, "mnt", "Degraded")
        return condition if condition.get("reason") == "ApplyFailed" else None

    condition = wait_for(degraded, "Degraded/ApplyFailed")
    message = condition["message"]
    assert condition["status"] == "True"
    assert "Deployment mnt-post (step 'post')" in message, message
    # the index is the rendered container's (the operator's two mounts come first)
    assert "containers[0].volumeMounts[2].name" in message and 'Not found: "nosuch"' in message, message

    kube.patch_pipeline(namespace, "mnt", [{"op": "remove", "path": "/spec/steps/1/pod"}])
    wait_for(lambda: kube.condition(namespace, "mnt", "Degraded").get("status") == "False", "Degraded=False after the fix")
