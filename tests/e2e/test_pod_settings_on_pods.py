"""Issue 9 on real pods: a step's `pod:` settings (env, envFrom, volumes and mounts, a ServiceAccount, affinity, a
topology spread, a PriorityClass, a RuntimeClass, pull secrets) take effect in its pods and in no other step's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.e2e.fixtures_pods import conveyor, conveyor_image, helm, make_pipeline  # noqa: F401 - fixtures
from tests.support.pods import Pipeline, Pod, fresh_namespace, kubectl_json

PRIORITY = "conveyor-e2e-high"
RUNTIME = "conveyor-e2e-runc"
#: What the step's own process sees, printed as JSON (run with `kubectl exec`).
PROBE = (
    "import json, os, pathlib; print(json.dumps({k: os.environ.get(k) for k in ('LOG_LEVEL', 'TOKEN', 'APP_MODE')}"
    " | {'labels': pathlib.Path('/etc/labels/a.txt').read_text() if pathlib.Path('/etc/labels/a.txt').exists() else None}))"
)


def _pod_settings(node: str) -> dict[str, Any]:
    return {
        "env": [{"name": "LOG_LEVEL", "value": "debug"}, {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "t"}}}],
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "APP_"}],
        "volumes": [{"name": "labels", "configMap": {"name": "labels"}}],
        "volumeMounts": [{"name": "labels", "mountPath": "/etc/labels", "readOnly": True}],
        "imagePullSecrets": [{"name": "registry"}],
        "serviceAccountName": "inference",
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]
                }
            }
        },
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
                                       "labelSelector": {"matchLabels": {"conveyor.dev/step": "tuned"}}}],
        "priorityClassName": PRIORITY,
        "runtimeClassName": RUNTIME,
    }


@pytest.fixture
def namespace(conveyor: Any) -> Iterator[str]:
    """A namespace holding what the settings name (ServiceAccount, ConfigMaps, Secrets), plus the cluster-scoped
    PriorityClass and RuntimeClass; all removed afterwards."""
    cluster = conveyor.cluster
    name = fresh_namespace(cluster, "e2e-podset")
    cluster.apply(
        f"""
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {{name: {PRIORITY}}}
value: 1000
---
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {{name: {RUNTIME}}}
handler: runc
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: inference, namespace: {name}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: labels, namespace: {name}}}
data: {{a.txt: hello from a ConfigMap}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings, namespace: {name}}}
data: {{MODE: fast}}
---
apiVersion: v1
kind: Secret
metadata: {{name: token, namespace: {name}}}
stringData: {{t: s3cr3t}}
---
apiVersion: v1
kind: Secret
metadata: {{name: registry, namespace: {name}}}
type: kubernetes.io/dockerconfigjson
stringData: {{.dockerconfigjson: '{{"auths": {{}}}}'}}
"""
    )
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
        cluster.kubectl("delete", "priorityclass", PRIORITY, "--wait=false", check=False)
        cluster.kubectl("delete", "runtimeclass", RUNTIME, "--wait=false", check=False)


def _seen_by(pipeline: Pipeline, pod: Pod) -> dict[str, Any]:
    out = pipeline.cluster.kubectl("-n", pipeline.namespace, "exec", pod.name, "-c", "step", "--", "python", "-c", PROBE)
    seen: dict[str, Any] = json.loads(out)
    return seen


def test_pod_settings_take_effect_in_that_steps_pods_only(make_pipeline: Any, namespace: str, conveyor: Any) -> None:
    node = kubectl_json(conveyor.cluster, "get", "nodes")["items"][0]["metadata"]["name"]
    manifest = {
        "apiVersion": "conveyor.dev/v1alpha1",
        "kind": "InferencePipeline",
        "metadata": {"name": "podset"},
        "spec": {"steps": [{"name": "plain", "op": "identity"}, {"name": "tuned", "op": "identity", "pod": _pod_settings(node)}]},
    }
    pipeline = make_pipeline(manifest, namespace=namespace)
    pipeline.wait_ready(timeout=300)

    (tuned,) = pipeline.pods(step="tuned")
    (plain,) = pipeline.pods(step="plain")
    assert _seen_by(pipeline, tuned) == {"LOG_LEVEL": "debug", "TOKEN": "s3cr3t", "APP_MODE": "fast", "labels": "hello from a ConfigMap"}
    assert _seen_by(pipeline, plain) == {"LOG_LEVEL": None, "TOKEN": None, "APP_MODE": None, "labels": None}

    spec = kubectl_json(conveyor.cluster, "-n", namespace, "get", "pod", tuned.name)["spec"]
    assert spec["serviceAccountName"] == "inference" and spec["automountServiceAccountToken"] is True  # named: its token
    assert (spec["priorityClassName"], spec["priority"]) == (PRIORITY, 1000)  # resolved by the API server's admission
    assert spec["runtimeClassName"] == RUNTIME and spec["imagePullSecrets"] == [{"name": "registry"}]
    assert spec["nodeName"] == node and spec["affinity"] and spec["topologySpreadConstraints"]
    plain_spec = kubectl_json(conveyor.cluster, "-n", namespace, "get", "pod", plain.name)["spec"]
    assert plain_spec["serviceAccountName"] == "default" and "runtimeClassName" not in plain_spec

    import tritonclient.grpc as tgrpc

    values = np.arange(8, dtype=np.float32).reshape(2, 4)
    client = tgrpc.InferenceServerClient(pipeline.grpc_address())
    try:
        tensor = tgrpc.InferInput("x", [2, 4], "FP32")
        tensor.set_data_from_numpy(values)
        np.testing.assert_array_equal(client.infer("podset", [tensor], client_timeout=60).as_numpy("x"), values)
    finally:
        client.close()
