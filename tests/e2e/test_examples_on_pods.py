"""Every example pipeline `kubectl apply`-ed on a real node (issue 13, items 2 and 3): its pods start and pass their
gRPC probes, the CR turns Ready from real pod readiness, `kubectl get ipl` prints the README's columns, and the
gateway Service answers over gRPC and HTTP exactly what `conveyor run` answers on the same manifest."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from conveyor_benchmarks.pipeline_bench import make_payloads
from conveyor_runtime.spec import ExecutionPlan, parse_manifest
from tests.e2e.fixtures_pods import conveyor, conveyor_image, helm  # noqa: F401 - fixtures
from tests.support.cluster import ClusterError
from tests.support.pipeline_fixtures import start_run
from tests.support.pods import EXAMPLES, Pipeline, Release, apply_pipeline, fresh_namespace

#: examples/<dir>/pipeline.yaml, each one whose pods use the images scripts/build-image.sh loads: their model steps build
#: the demo models (the defect-detection one a ResNet-50) at first start, on the examples image. custom-op's step needs
#: an image of its own (tests/e2e/test_model_sources_on_pods.py builds it and serves that example).
MANIFESTS = {path.parent.name: path for path in sorted(EXAMPLES.glob("*/pipeline.yaml")) if path.parent.name != "custom-op"}
#: The production image (the chart's operator image, every pod's default) and the Dockerfile's `examples` target.
PRODUCTION_IMAGE, EXAMPLES_IMAGE = "conveyor:dev", "conveyor-examples:dev"
README_COLUMNS = ["NAME", "READY", "STEPS", "REPLICAS", "THROUGHPUT", "P99", "BOTTLENECK", "ENDPOINT", "AGE"]


def _cells(header: str, row: str) -> dict[str, str]:
    """A `kubectl get` row by column name (cells are aligned under their header; live figures may still be blank)."""
    names = header.split()
    starts = [header.index(name) for name in names]
    ends = [*starts[1:], None]
    return {name: row[start:end].strip() for name, start, end in zip(names, starts, ends)}


STEP_GRPC_PORT = 9000


@pytest.fixture(scope="module")
def deployed(conveyor: Release) -> Iterator[dict[str, Pipeline]]:
    """Every example applied at once (their pods start side by side), each in a namespace of its own."""
    pipelines: dict[str, Pipeline] = {}
    try:
        for example, manifest in MANIFESTS.items():
            namespace = fresh_namespace(conveyor.cluster, f"e2e-{example}")
            pipelines[example] = apply_pipeline(conveyor.cluster, manifest, namespace)
        yield pipelines
    finally:
        for pipeline in pipelines.values():
            try:
                conveyor.cluster.kubectl("delete", "namespace", pipeline.namespace, "--wait=false")
            except ClusterError:
                pass


def _spec(example: str) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(MANIFESTS[example].read_text())["spec"]
    return spec


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


@pytest.mark.parametrize("example", MANIFESTS)
def test_example_pods_start_and_pass_their_grpc_probes(deployed: dict[str, Pipeline], example: str) -> None:
    pipeline = deployed[example]
    pipeline.wait_ready()
    for step in _spec(example)["steps"]:
        pods = [pod for pod in pipeline.pods(component="step", step=step["name"]) if not pod.deleting]
        assert len(pods) == step.get("replicas", 1), (step["name"], pods)
        assert all(pod.ready and pod.restarts == 0 for pod in pods), pods
    deployment = pipeline.deployments()[f"{pipeline.name}-{_spec(example)['steps'][0]['name']}"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    # Readiness, liveness and startup are the kubelet's own gRPC health checks against the step's port.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == STEP_GRPC_PORT, container[probe]
    gateways = [pod for pod in pipeline.pods(component="gateway") if not pod.deleting]
    assert len(gateways) == 1 and gateways[0].ready and gateways[0].restarts == 0, gateways


@pytest.mark.parametrize("example", MANIFESTS)
def test_example_model_steps_run_on_the_examples_image_and_every_other_pod_on_the_production_image(
    deployed: dict[str, Pipeline], example: str
) -> None:
    pipeline = deployed[example]
    pipeline.wait_ready()
    pods = yaml.safe_load(pipeline.kubectl("get", "pods", "-l", pipeline.selector, "-o", "yaml"))["items"]
    images = {
        (pod["metadata"]["labels"].get("conveyor.dev/step", "gateway"), container["image"])
        for pod in pods
        if not pod["metadata"].get("deletionTimestamp")
        for container in pod["spec"]["containers"]
    }
    builders = {step["name"] for step in _spec(example)["steps"] if "build" in step.get("model", {})}
    assert builders, f"{example} builds no demo model"
    expected = {
        (step["name"], EXAMPLES_IMAGE if step["name"] in builders else PRODUCTION_IMAGE) for step in _spec(example)["steps"]
    }
    assert images == expected | {("gateway", PRODUCTION_IMAGE)}


@pytest.mark.parametrize("example", MANIFESTS)
def test_example_ready_condition_comes_from_real_pod_readiness(deployed: dict[str, Pipeline], example: str) -> None:
    pipeline = deployed[example]
    obj = pipeline.wait_ready()
    status = obj["status"]
    ready_pods = [pod for pod in pipeline.pods() if pod.ready and not pod.deleting]
    by_step = {s["name"]: s["ready"] for s in status["steps"]}
    assert by_step == {step["name"]: sum(1 for pod in ready_pods if pod.step == step["name"]) for step in _spec(example)["steps"]}
    step_pods = sum(1 for pod in ready_pods if pod.component == "step")
    assert status["replicas"] == f"{step_pods}/{step_pods}"
    # The CR turned Ready no earlier than the last pod the kubelet marked Ready.
    became_ready = _time(pipeline.conditions(obj)["Ready"]["lastTransitionTime"])
    pod_objects = pipeline.kubectl("get", "pods", "-l", pipeline.selector, "-o", "yaml")
    last_pod_ready = max(
        _time(c["lastTransitionTime"])
        for item in yaml.safe_load(pod_objects)["items"]
        for c in item["status"]["conditions"]
        if c["type"] == "Ready"
    )
    assert became_ready >= last_pod_ready, (became_ready, last_pod_ready)


@pytest.mark.parametrize("example", MANIFESTS)
def test_kubectl_get_ipl_prints_the_readme_columns(deployed: dict[str, Pipeline], example: str) -> None:
    pipeline = deployed[example]
    pipeline.wait_ready()
    header, *rows = pipeline.kubectl("get", "ipl").splitlines()
    assert header.split() == README_COLUMNS
    steps = _spec(example)["steps"]
    replicas = sum(step.get("replicas", 1) for step in steps)
    [row] = rows
    cells = _cells(header, row)
    assert [cells[c] for c in ("NAME", "READY", "STEPS", "REPLICAS", "ENDPOINT")] == [
        pipeline.name,
        "True",
        str(len(steps)),
        f"{replicas}/{replicas}",
        f"{pipeline.name}-gateway.{pipeline.namespace}.svc:8001",
    ]
    wide_header = pipeline.kubectl("get", "ipl", "-o", "wide").splitlines()[0].split()
    assert wide_header == [*README_COLUMNS, "REASON", "SATURATED"]


# --- item 3: the gateway Service answers like `conveyor run` -------------------------------------------------------
def _request(example: str) -> tuple[str, np.ndarray, str]:
    """(input name, tensor, datatype) of one request to an example: real digits, or PNG camera frames (lossless, so
    the pods' and this machine's image decoders see the same pixels)."""
    if example == "digits":
        from conveyor_examples.digits import load_split

        return "image", load_split()[2][:16], "UINT8"
    manifest = parse_manifest(yaml.safe_load(MANIFESTS[example].read_text()))
    frames = make_payloads(manifest, "png", rows=3, frame=(320, 240), count=1)[0]
    return "image", frames, "BYTES"


def _answers(model: str, grpc_address: str, http_address: str, example: str) -> dict[str, dict[str, np.ndarray]]:
    """Every output of one request, over gRPC and over HTTP (tritonclient, binary tensors)."""
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp

    name, tensor, datatype = _request(example)
    answers: dict[str, dict[str, np.ndarray]] = {}
    grpc_client = tgrpc.InferenceServerClient(grpc_address)
    http_client = thttp.InferenceServerClient(http_address)
    try:
        outputs = [o["name"] for o in http_client.get_model_metadata(model)["outputs"]]
        g_input = tgrpc.InferInput(name, list(tensor.shape), datatype)
        g_input.set_data_from_numpy(tensor)
        result = grpc_client.infer(model, [g_input], client_timeout=120)
        answers["grpc"] = {out: result.as_numpy(out) for out in outputs}
        h_input = thttp.InferInput(name, list(tensor.shape), datatype)
        h_input.set_data_from_numpy(tensor, binary_data=True)
        h_result = http_client.infer(model, [h_input], timeout=120_000_000)
        answers["http"] = {out: h_result.as_numpy(out) for out in outputs}
    finally:
        grpc_client.close()
        http_client.close()
    return answers


def _assert_same(expected: dict[str, np.ndarray], got: dict[str, np.ndarray], where: str) -> None:
    assert expected.keys() == got.keys(), where
    for output, want in expected.items():
        if want.dtype.kind in "fc":
            np.testing.assert_allclose(got[output], want, rtol=1e-5, atol=1e-6, err_msg=f"{where}: {output}")
        else:
            np.testing.assert_array_equal(got[output], want, err_msg=f"{where}: {output}")


@pytest.mark.parametrize("example", MANIFESTS)
def test_gateway_service_answers_like_conveyor_run(deployed: dict[str, Pipeline], example: str, tmp_path: Path) -> None:
    pipeline = deployed[example]
    pipeline.wait_ready()
    ip = pipeline.gateway_ip()
    on_pods = _answers(pipeline.name, f"{ip}:8001", f"{ip}:8000", example)
    local = start_run(MANIFESTS[example], tmp_path, timeout=400)
    try:
        here = _answers(pipeline.name, local.grpc, local.http, example)
    finally:
        local.stop()
    for protocol in ("grpc", "http"):
        _assert_same(here["grpc"], on_pods[protocol], f"{example} over {protocol} through the gateway Service")
    _assert_same(here["grpc"], here["http"], f"{example} under conveyor run, HTTP against gRPC")


@pytest.mark.parametrize("example", MANIFESTS)
def test_example_steps_forward_tensors_to_each_other_on_pods(deployed: dict[str, Pipeline], example: str) -> None:
    """With the default data path, each step of the entry chain sends its outputs to the next step's pods itself
    (found by the Service DNS name), not back through the gateway."""
    pipeline = deployed[example]
    pipeline.wait_ready()
    ip = pipeline.gateway_ip()
    _answers(pipeline.name, f"{ip}:8001", f"{ip}:8000", example)  # one request over gRPC, one over HTTP
    plan = ExecutionPlan.from_manifest(parse_manifest(yaml.safe_load(MANIFESTS[example].read_text())))
    chain = [plan.entry, *plan.chain_after(plan.entry)]
    assert len(chain) > 1, f"{example}: its entry step starts no chain"
    for step, following in itertools.pairwise(chain):
        forwarded = sum(
            pipeline.metric(pod, "conveyor_step_forwarded_total", step=step, to=following, code="OK")
            for pod in pipeline.pods(step=step)
        )
        assert forwarded >= 2, f"{example}: step {step} forwarded {forwarded} request(s) to {following}"


def test_operator_logged_no_forbidden_answer_while_reconciling_the_examples(
    conveyor: Release,
    deployed: dict[str, Pipeline],
) -> None:
    for pipeline in deployed.values():
        pipeline.wait_ready()
    forbidden = conveyor.forbidden_log_lines()
    assert forbidden == [], "\n".join(forbidden[:20])
