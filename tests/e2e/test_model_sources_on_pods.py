"""Issue 9 on real pods: a model from a PersistentVolumeClaim, a model from S3 (fetched by the `fetch` init container
from a real S3-compatible server on this machine), and a custom op from its own image, each served end to end
through the gateway Service."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from tests.e2e.fixtures_pods import conveyor, conveyor_image, helm, make_pipeline  # noqa: F401 - fixtures
from tests.support.cluster import Cluster
from tests.support.pipeline_fixtures import start_run
from tests.support.pods import EXAMPLES, REPO_ROOT, Pipeline, fresh_namespace, kubectl_json, wait_for

X = np.array([[1.0, -2.0, 0.5, 4.0], [0.0, 3.0, -1.0, 2.0]], dtype=np.float32)
CUSTOM_OP_SCRIPT = REPO_ROOT / "scripts" / "build-custom-op-image.sh"
CUSTOM_OP_IMAGE = "conveyor-custom-ops:dev"


def _affine_onnx(path: Path, scale: float, shift: float) -> Path:
    """y = x * scale + shift on FP32 [N, 4]."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["scaled"]), helper.make_node("Add", ["scaled", "shift"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]), helper.make_tensor("shift", TensorProto.FLOAT, [], [shift])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _infer(pipeline: Pipeline, output: str = "y", address: str | None = None) -> np.ndarray:
    import tritonclient.grpc as tgrpc

    client = tgrpc.InferenceServerClient(address or pipeline.grpc_address())
    try:
        tensor = tgrpc.InferInput("x", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        result = client.infer(pipeline.name, [tensor], client_timeout=120)
    finally:
        client.close()
    answer: np.ndarray = result.as_numpy(output)
    return answer


def _model_pipeline(name: str, model: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "conveyor.dev/v1alpha1",
        "kind": "InferencePipeline",
        "metadata": {"name": name},
        "spec": {"steps": [{"name": "relay", "op": "identity"}, {"name": "affine", "model": model}]},
    }


def _step_pod_spec(pipeline: Pipeline, step: str) -> dict[str, Any]:
    (pod,) = pipeline.pods(step=step)
    spec: dict[str, Any] = kubectl_json(pipeline.cluster, "-n", pipeline.namespace, "get", "pod", pod.name)["spec"]
    return spec


def _host_address(cluster: Cluster) -> str:
    """This machine's address on the node's link: what pods reach it at (scripts/cluster.sh: the link's first + 1)."""
    return str(ipaddress.ip_network(cluster.config.link_cidr)[1])


@pytest.fixture
def namespace(conveyor: Any) -> Iterator[str]:
    """A fresh namespace, deleted afterwards (not waited for)."""
    name = fresh_namespace(conveyor.cluster, "e2e-sources")
    try:
        yield name
    finally:
        conveyor.cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def model_volume(conveyor: Any) -> Iterator[Path]:
    """A directory on this machine holding `nested/affine.onnx` (y = 3x - 1), readable by the pods' user."""
    root = Path(tempfile.mkdtemp(prefix="conveyor-e2e-pv-", dir="/var/tmp"))
    try:
        (root / "nested").mkdir()
        _affine_onnx(root / "nested" / "affine.onnx", 3.0, -1.0)
        for path in (root, root / "nested", root / "nested" / "affine.onnx"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield root
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_a_model_from_a_persistent_volume_claim_is_served_end_to_end(
    make_pipeline: Any, model_volume: Path, namespace: str, conveyor: Any
) -> None:
    cluster: Cluster = conveyor.cluster
    pv = f"conveyor-{namespace}"
    cluster.apply(
        f"""
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {pv}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadOnlyMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {{path: {model_volume}, type: Directory}}
  claimRef: {{namespace: {namespace}, name: trained}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: trained, namespace: {namespace}}}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: {pv}
  resources: {{requests: {{storage: 1Gi}}}}
"""
    )
    try:
        started = time.monotonic()
        pipeline = make_pipeline(_model_pipeline("frompvc", {"uri": "pvc://trained/nested/affine.onnx"}), namespace=namespace)
        pipeline.wait_ready(timeout=300)
        print(f"kubectl apply -> Ready (model from a PVC): {time.monotonic() - started:.1f} s")
        np.testing.assert_allclose(_infer(pipeline), X * 3.0 - 1.0, rtol=1e-6)
        spec = _step_pod_spec(pipeline, "affine")
        assert "initContainers" not in spec  # nothing to download
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["model-pvc"]["persistentVolumeClaim"] == {"claimName": "trained", "readOnly": True}
        mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["model-pvc"]["mountPath"] == "/var/lib/conveyor/pvc/trained" and mounts["model-pvc"]["readOnly"] is True
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=120s", check=False)
        cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)


@pytest.fixture(scope="module")
def custom_op_image(conveyor: Any) -> str:
    """examples/custom-op/Dockerfile built FROM conveyor:dev and loaded into the cluster (scripts/build-custom-op-image.sh)."""
    cluster: Cluster = conveyor.cluster
    env = {**os.environ, **cluster.config.env()}
    subprocess.run(["bash", str(CUSTOM_OP_SCRIPT), "--cluster", cluster.config.name], env=env, check=True, timeout=2400)
    return CUSTOM_OP_IMAGE


def test_a_custom_op_from_its_own_image_is_served_end_to_end_as_conveyor_run_serves_it(
    make_pipeline: Any, custom_op_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = EXAMPLES / "custom-op" / "pipeline.yaml"
    pipeline = make_pipeline(example)  # its own name: `conveyor run` serves the model under the same one
    pipeline.wait_ready(timeout=300)
    np.testing.assert_allclose(_infer(pipeline), X * 2.0 + 1.0, rtol=1e-6)  # the example's scale 2, shift 1
    monkeypatch.setenv("PYTHONPATH", str(example.parent))  # locally the package is importable instead (`image:` ignored)
    run = start_run(example, tmp_path)
    try:
        np.testing.assert_array_equal(_infer(pipeline, address=run.grpc), _infer(pipeline))
    finally:
        run.stop()
    images = {step: _step_pod_spec(pipeline, step)["containers"][0]["image"] for step in ("prepare", "affine")}
    assert images == {"prepare": "conveyor:dev", "affine": custom_op_image}
    (gateway,) = pipeline.pods(component="gateway")
    gateway_spec = kubectl_json(pipeline.cluster, "-n", pipeline.namespace, "get", "pod", gateway.name)["spec"]
    assert gateway_spec["containers"][0]["image"] == "conveyor:dev"


@pytest.fixture
def s3(conveyor: Any) -> Iterator[Any]:
    from tests.support.s3_server import s3_server

    with s3_server(host=_host_address(conveyor.cluster), buckets=["models"]) as server:
        yield server


def _credentials_secret(pipeline_namespace: str, cluster: Cluster, name: str, env: dict[str, str]) -> None:
    args = [f"--from-literal={key}={value}" for key, value in env.items()]
    cluster.kubectl("-n", pipeline_namespace, "create", "secret", "generic", name, *args)


def test_a_model_from_s3_is_fetched_by_the_init_container_and_served_end_to_end_as_conveyor_run_serves_it(
    make_pipeline: Any, s3: Any, conveyor: Any, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster: Cluster = conveyor.cluster
    model = _affine_onnx(tmp_path / "affine.onnx", 0.5, 2.0)
    uri = s3.upload("models/team/affine.onnx", model)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    _credentials_secret(namespace, cluster, "s3-creds", s3.env(AWS_ENDPOINT_URL=s3.endpoint_at(_host_address(cluster))))
    started = time.monotonic()
    manifest = _model_pipeline("froms3", {"uri": uri, "sha256": digest, "credentialsSecret": "s3-creds", "cacheSizeLimit": "64Mi"})
    pipeline = make_pipeline(manifest, namespace=namespace)
    pipeline.wait_ready(timeout=300)
    took = time.monotonic() - started
    print(f"kubectl apply -> Ready (model from S3, fetched by the init container): {took:.1f} s")
    np.testing.assert_allclose(_infer(pipeline), X * 0.5 + 2.0, rtol=1e-6)
    spec = _step_pod_spec(pipeline, "affine")
    (fetch,) = spec["initContainers"]
    assert fetch["name"] == "fetch" and fetch["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert {v["name"]: v for v in spec["volumes"]}["models"]["emptyDir"] == {"sizeLimit": "64Mi"}

    # The same manifest, unchanged, with `conveyor run` here: the credentials come from the environment instead.
    manifest_path = tmp_path / "pipeline.yaml"
    manifest_path.write_text(yaml.safe_dump(manifest))
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CONVEYOR_MODEL_CACHE", str(tmp_path / "cache"))
    run = start_run(manifest_path, tmp_path)
    try:
        np.testing.assert_array_equal(_infer(pipeline, address=run.grpc), _infer(pipeline))
    finally:
        run.stop()


def test_a_model_that_cannot_be_fetched_turns_the_pipeline_degraded_with_the_fetchs_reason(
    make_pipeline: Any, s3: Any, conveyor: Any, namespace: str, tmp_path: Path
) -> None:
    cluster: Cluster = conveyor.cluster
    uri = s3.upload("models/affine.onnx", _affine_onnx(tmp_path / "affine.onnx", 1.0, 0.0))
    wrong = s3.env(AWS_ENDPOINT_URL=s3.endpoint_at(_host_address(cluster)), AWS_SECRET_ACCESS_KEY="not-the-key")
    _credentials_secret(namespace, cluster, "s3-creds", wrong)
    pipeline = make_pipeline(_model_pipeline("badcreds", {"uri": uri, "credentialsSecret": "s3-creds"}), namespace=namespace)

    def degraded() -> dict[str, Any] | None:
        condition = pipeline.conditions().get("Degraded") or {}
        return condition if condition.get("status") == "True" and "container fetch" in condition.get("message", "") else None

    condition = wait_for(degraded, 180, "Degraded quoting the fetch init container", interval=1.0)
    print(f"Degraded: {condition['message']}")
    assert condition["reason"] == "StepFailing"
    assert "step 'affine'" in condition["message"] and uri in condition["message"], condition

