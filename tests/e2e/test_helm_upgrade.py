"""`helm upgrade` to a chart whose CRD gained a field (issue 13, item 10), on a real node.

Helm installs files under a chart's crds/ once and never upgrades them; charts/conveyor therefore renders its CRD
from a template (templates/crd.yaml, kept on uninstall), so an upgrade applies the new schema and existing pipelines
keep running untouched.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.e2e.fixtures_pods import MakePipeline, conveyor, conveyor_image, helm, make_pipeline  # noqa: F401 - fixtures
from tests.support.cluster import ClusterError
from tests.support.pods import CHART, Pipeline, Pod, Release, identity_manifest, kubectl_json, wait_for

CRD_NAME = "inferencepipelines.conveyor.dev"
CRD_FILE = Path("files") / f"{CRD_NAME}.yaml"
#: The field the upgraded chart's CRD adds to spec.
NEW_FIELD = "owner"


@pytest.fixture
def grown_chart(tmp_path: Path) -> Path:
    """A copy of charts/conveyor, version 0.1.1, whose CRD has a new optional field spec.owner."""
    chart = tmp_path / "conveyor"
    shutil.copytree(CHART, chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["version"] = "0.1.1"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    crd = yaml.safe_load((chart / CRD_FILE).read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert NEW_FIELD not in spec["properties"]
    spec["properties"][NEW_FIELD] = {"type": "string", "description": "Team that owns this pipeline."}
    (chart / CRD_FILE).write_text(yaml.safe_dump(crd, sort_keys=False))
    return chart


@pytest.fixture
def serving(make_pipeline: MakePipeline) -> Pipeline:
    pipeline = make_pipeline(identity_manifest("steady"), name="steady")
    pipeline.wait_ready(timeout=180)
    _first_answer(pipeline)
    return pipeline


@pytest.fixture
def restore_chart(conveyor: Release) -> Iterator[Release]:
    """Put the checkout's chart back afterwards, whatever the test did to the release."""
    try:
        yield conveyor
    finally:
        conveyor.install()


def _assert_echoes(pipeline: Pipeline) -> None:
    import tritonclient.grpc as tgrpc

    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    client = tgrpc.InferenceServerClient(pipeline.grpc_address())
    try:
        tensor = tgrpc.InferInput("x", [2, 3], "FP32")
        tensor.set_data_from_numpy(values)
        result = client.infer(pipeline.name, [tensor], client_timeout=60)
    finally:
        client.close()
    np.testing.assert_array_equal(result.as_numpy("x"), values)


def _first_answer(pipeline: Pipeline) -> None:
    """Wait (bounded) for the first answer through the gateway Service, as `served.serving` does: twice in CI the host
    had no route to a just-made Service's address for a moment ("Network is unreachable"); later calls found it."""
    from tritonclient.utils import InferenceServerException

    def answered() -> bool | None:
        try:
            _assert_echoes(pipeline)
        except InferenceServerException as exc:
            if exc.status() != "StatusCode.UNAVAILABLE":
                raise
            return None
        return True

    wait_for(answered, 60, f"{pipeline.name} to answer through its gateway Service")


def _spec_fields(release: Release) -> set[str]:
    crd = kubectl_json(release.cluster, "get", "crd", CRD_NAME)
    return set(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"])


def _dry_run_with_new_field(pipeline: Pipeline) -> dict[str, Any]:
    """The pipeline as the API server would store it with spec.owner set (server-side dry run: nothing changes)."""
    body = identity_manifest(pipeline.name)
    body["metadata"]["namespace"] = pipeline.namespace
    body["spec"][NEW_FIELD] = "vision-team"
    out = pipeline.cluster.kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(body))
    stored: dict[str, Any] = json.loads(out)
    return stored


def _identity(pods: list[Pod]) -> dict[str, tuple[str, int]]:
    return {pod.name: (pod.uid, pod.restarts) for pod in pods if not pod.deleting}


def test_helm_upgrade_to_a_chart_whose_crd_gained_a_field_keeps_pipelines_working(
    restore_chart: Release, serving: Pipeline, grown_chart: Path
) -> None:
    release = restore_chart
    with pytest.raises(ClusterError, match=f'unknown field "spec.{NEW_FIELD}"'):
        _dry_run_with_new_field(serving)
    pods_before = _identity(serving.pods())
    generation = serving.get()["metadata"]["generation"]

    release.upgrade(grown_chart)

    assert NEW_FIELD in _spec_fields(release), "helm upgrade left the cluster's CRD as it was"
    crd = kubectl_json(release.cluster, "get", "crd", CRD_NAME)
    assert crd["metadata"]["labels"]["helm.sh/chart"] == "conveyor-0.1.1"
    assert _dry_run_with_new_field(serving)["spec"][NEW_FIELD] == "vision-team"  # stored, not pruned
    obj = serving.wait_ready(timeout=60)
    assert obj["metadata"]["generation"] == generation
    assert _identity(serving.pods()) == pods_before, "a pod of the pipeline was replaced or restarted"
    _assert_echoes(serving)


def test_helm_uninstall_keeps_the_crd_and_pipelines_and_a_reinstall_adopts_them(
    restore_chart: Release, serving: Pipeline
) -> None:
    release = restore_chart
    pods_before = _identity(serving.pods())
    release.helm("uninstall", release.name, "--namespace", release.namespace, "--wait", "--timeout", "120s")

    wait_for(lambda: not release.operator_pods(), 120, "the operator pod to be gone after helm uninstall")
    kubectl_json(release.cluster, "get", "crd", CRD_NAME)  # kept (helm.sh/resource-policy: keep)
    assert serving.get()["metadata"]["name"] == serving.name
    _assert_echoes(serving)  # the pipeline serves on without its operator

    release.install()  # the same release name adopts the kept CRD
    crd = kubectl_json(release.cluster, "get", "crd", CRD_NAME)
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release.name
    serving.wait_ready(timeout=120)
    assert _identity(serving.pods()) == pods_before, "a pod of the pipeline was replaced or restarted"
    _assert_echoes(serving)
