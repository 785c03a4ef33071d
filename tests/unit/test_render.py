"""Children rendered from a pipeline spec: names, replicas, env, probes, security, and valid Kubernetes objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from conveyor_operator.labels import DEFAULT_IMAGE, STEP_LABEL
from conveyor_operator.render import (
    WORK_DIR,
    Owner,
    name_errors,
    pipeline_manifest,
    render_children,
)
from conveyor_runtime.spec import PipelineSpec, load_manifest, parse_manifest, step_from_env

REPO_ROOT = Path(__file__).resolve().parents[2]
OWNER = Owner(name="demo", namespace="ml", uid="0000-1111")


def _spec(**overrides: Any) -> PipelineSpec:
    data: dict[str, Any] = {
        "steps": [
            {"name": "pre", "op": "preprocess", "config": {"size": 32}},
            {
                "name": "cls",
                "model": {
                    "path": "models/m.onnx",
                    "build": "conveyor_examples.resnet:build",
                    "instances": 2,  # one per GPU
                },
                "replicas": 3,
                "batching": {"maxBatchSize": 32, "maxQueueDelayMicroseconds": 250},
                "resources": {"gpu": 2, "cpu": "2", "memory": "4Gi"},
                "nodeSelector": {"accelerator": "h100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
        ],
        **overrides,
    }
    return PipelineSpec.model_validate(data)


def _by_name(children: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["kind"], c["metadata"]["name"]): c for c in children}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def test_render_children_names_and_order() -> None:
    children = render_children(OWNER, _spec())
    assert [(c["kind"], c["metadata"]["name"]) for c in children] == [
        ("ConfigMap", "demo-graph"),
        ("Service", "demo-pre"),
        ("Deployment", "demo-pre"),
        ("Service", "demo-cls"),
        ("Deployment", "demo-cls"),
        ("Service", "demo-gateway"),
        ("Deployment", "demo-gateway"),
    ]
    for child in children:
        meta = child["metadata"]
        assert meta["namespace"] == "ml"
        assert meta["ownerReferences"][0]["uid"] == "0000-1111" and meta["ownerReferences"][0]["controller"] is True
        assert meta["labels"]["app.kubernetes.io/instance"] == "demo"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "conveyor-operator"


def test_render_step_deployment_carries_the_step() -> None:
    deployment = _by_name(render_children(OWNER, _spec(), "registry/conveyor:1"))[("Deployment", "demo-cls")]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["metadata"]["labels"][STEP_LABEL] == "cls"
    container = _container(deployment)
    assert container["image"] == "registry/conveyor:1"
    assert container["command"] == ["conveyor", "step", "--port", "9000", "--metrics-port", "9090"]
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"memory": "4Gi", "nvidia.com/gpu": 2},
    }
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CONVEYOR_MAX_BATCH_SIZE"] == "32" and env["CONVEYOR_MAX_QUEUE_DELAY_US"] == "250"
    step = step_from_env(env)
    assert step == _spec().steps[1].model_copy(update={"replicas": 1})  # a replica needs no replica count
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"accelerator": "h100"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_render_step_deployment_is_locked_down_and_probed() -> None:
    deployment = _by_name(render_children(OWNER, _spec()))[("Deployment", "demo-pre")]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert container["image"] == DEFAULT_IMAGE
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["terminationGracePeriodSeconds"] >= 30
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": 9000}
    assert container["workingDir"] == WORK_DIR
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {WORK_DIR, "/tmp"}
    assert all("emptyDir" in v for v in pod["volumes"])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"grpc": 9000, "metrics": 9090}
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    assert "resources" in container and container["resources"] == {}


def test_render_step_service_is_headless() -> None:
    service = _by_name(render_children(OWNER, _spec()))[("Service", "demo-cls")]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"] == [{"name": "grpc", "port": 9000, "targetPort": "grpc", "protocol": "TCP"}]
    deployment = _by_name(render_children(OWNER, _spec()))[("Deployment", "demo-cls")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_render_gateway_reads_the_graph_configmap() -> None:
    spec = _spec(gateway={"grpcPort": 9001, "httpPort": 9002, "replicas": 2})
    children = _by_name(render_children(OWNER, spec))
    deployment = children[("Deployment", "demo-gateway")]
    container = _container(deployment)
    assert container["command"] == [
        "conveyor", "gateway", "--manifest", "/etc/conveyor/pipeline.yaml",
        "--grpc-port", "9001", "--http-port", "9002", "--metrics-port", "9090", "--step-port", "9000",
        "--pre-stop", "5", "--grace", "15",
    ]
    assert deployment["spec"]["replicas"] == 2
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["graph"]["configMap"]["name"] == "demo-graph"
    assert {"name": "graph", "mountPath": "/etc/conveyor", "readOnly": True} in container["volumeMounts"]
    service = children[("Service", "demo-gateway")]
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("grpc", 9001), ("http", 9002)]
    manifest = yaml.safe_load(children[("ConfigMap", "demo-graph")]["data"]["pipeline.yaml"])
    assert parse_manifest(manifest).spec == spec


def test_render_gateway_rolls_when_the_graph_changes_only() -> None:
    def digest(spec: PipelineSpec) -> str:
        gateway = _by_name(render_children(OWNER, spec))[("Deployment", "demo-gateway")]
        value: str = gateway["spec"]["template"]["metadata"]["annotations"]["conveyor.dev/manifest-sha256"]
        return value

    base = _spec()
    assert digest(base) == digest(_spec())
    changed = PipelineSpec.model_validate({**base.model_dump(), "output": "pre"})
    assert digest(changed) != digest(base)


def test_render_scaling_a_step_or_the_gateway_changes_no_pod_template() -> None:
    """Editing `replicas` only changes Deployment.spec.replicas: no pod is restarted, the gateway's neither."""

    def templates(spec: PipelineSpec) -> dict[str, Any]:
        children = _by_name(render_children(OWNER, spec))
        return {name: child["spec"]["template"] for (kind, name), child in children.items() if kind == "Deployment"}

    def replicas(spec: PipelineSpec) -> dict[str, int]:
        children = _by_name(render_children(OWNER, spec))
        return {name: child["spec"]["replicas"] for (kind, name), child in children.items() if kind == "Deployment"}

    base = _spec()
    data = base.model_dump()
    data["steps"][0]["replicas"], data["steps"][1]["replicas"], data["gateway"]["replicas"] = 4, 1, 3
    scaled = PipelineSpec.model_validate(data)
    assert replicas(scaled) == {"demo-pre": 4, "demo-cls": 1, "demo-gateway": 3}
    assert replicas(base) == {"demo-pre": 1, "demo-cls": 3, "demo-gateway": 1}
    assert templates(scaled) == templates(base)


def test_render_uses_spec_image_over_the_default() -> None:
    children = render_children(OWNER, _spec(image="example.com/conveyor:gpu"), "conveyor:cpu")
    images = {_container(c)["image"] for c in children if c["kind"] == "Deployment"}
    assert images == {"example.com/conveyor:gpu"}


def test_render_without_uid_has_no_owner_reference() -> None:
    children = render_children(Owner(name="demo", namespace="ml"), _spec())
    assert all("ownerReferences" not in c["metadata"] for c in children)


@pytest.mark.parametrize(
    ("pipeline", "step", "path"),
    [("1demo", "pre", "metadata.name"), ("d" * 41, "pre", "metadata.name"), ("d" * 40, "s" * 30, "spec.steps[0].name")],
)
def test_name_errors_catch_invalid_child_names(pipeline: str, step: str, path: str) -> None:
    spec = PipelineSpec.model_validate({"steps": [{"name": step, "op": "preprocess"}]})
    assert [e.path for e in name_errors(pipeline, spec)] == [path]


def test_name_errors_accept_good_names() -> None:
    assert name_errors("demo", _spec()) == []


EXAMPLES = sorted((REPO_ROOT / "examples").glob("*/pipeline*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(REPO_ROOT)) for p in EXAMPLES])
def test_render_examples_validate_against_the_kubernetes_schemas(path: Path) -> None:
    manifest = load_manifest(path)
    owner = Owner(name=manifest.metadata.name, namespace="default", uid="0000")
    children = render_children(owner, manifest.spec)
    for child in children:
        kubernetes_validate.validate(child, "1.36.0", strict=True)
    assert parse_manifest(yaml.safe_load(pipeline_manifest(owner, manifest.spec))).spec == manifest.spec


def test_render_gateway_is_ready_while_it_serves_whatever_the_steps_do() -> None:
    """One step's outage keeps the gateway in its Service (clients get UNAVAILABLE naming the step)."""
    container = _container(_by_name(render_children(OWNER, _spec()))[("Deployment", "demo-gateway")])
    assert container["readinessProbe"]["httpGet"] == {"path": "/gateway/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}


def test_render_gateway_keeps_answering_while_its_endpoints_drop_it() -> None:
    deployment = _by_name(render_children(OWNER, _spec()))[("Deployment", "demo-gateway")]
    command = _container(deployment)["command"]
    pre_stop, grace = (float(command[command.index(flag) + 1]) for flag in ("--pre-stop", "--grace"))
    assert pre_stop > 0
    assert pre_stop + grace < deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


def _deployments(spec: PipelineSpec, default_image: str = DEFAULT_IMAGE) -> dict[str, dict[str, Any]]:
    return {c["metadata"]["name"]: c for c in render_children(OWNER, spec, default_image) if c["kind"] == "Deployment"}


def test_render_a_steps_image_wins_over_the_pipelines_and_the_operators() -> None:
    spec = PipelineSpec.model_validate(
        {
            "steps": [{"name": "pre", "op": "identity", "image": "me/custom-ops:2"}, {"name": "cls", "op": "topk"}],
            "gateway": {"image": "me/gateway:3"},
        }
    )
    images = {name: _container(d)["image"] for name, d in _deployments(spec, "operator/conveyor:1").items()}
    assert images == {"demo-pre": "me/custom-ops:2", "demo-cls": "operator/conveyor:1", "demo-gateway": "me/gateway:3"}
    with_pipeline_image = spec.model_copy(update={"image": "pipeline/conveyor:9"})
    images = {name: _container(d)["image"] for name, d in _deployments(with_pipeline_image, "operator/conveyor:1").items()}
    assert images == {"demo-pre": "me/custom-ops:2", "demo-cls": "pipeline/conveyor:9", "demo-gateway": "me/gateway:3"}


POD_SETTINGS: dict[str, Any] = {
    "env": [{"name": "LOG_LEVEL", "value": "debug"}, {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "t"}}}],
    "envFrom": [{"configMapRef": {"name": "settings"}}],
    "volumes": [{"name": "labels", "configMap": {"name": "labels"}}],
    "volumeMounts": [{"name": "labels", "mountPath": "/etc/labels", "readOnly": True}],
    "imagePullSecrets": [{"name": "registry"}],
    "serviceAccountName": "inference",
    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}},
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}],
    "priorityClassName": "high",
    "runtimeClassName": "nvidia",
}
POD_LEVEL = ("imagePullSecrets", "serviceAccountName", "affinity", "topologySpreadConstraints", "priorityClassName", "runtimeClassName")


@pytest.mark.parametrize("where", ["step", "gateway"])
def test_render_pod_settings_are_merged_into_only_those_pods_after_the_operators_own(where: str) -> None:
    plain = _spec()
    data = plain.model_dump()
    if where == "step":
        data["steps"][1]["pod"] = POD_SETTINGS
    else:
        data["gateway"]["pod"] = POD_SETTINGS
    target = "demo-cls" if where == "step" else "demo-gateway"
    before, after = _deployments(plain), _deployments(PipelineSpec.model_validate(data))
    for name in before:
        if name != target and where == "step":
            assert after[name] == before[name], name  # no other pod changes
    pod, old_pod = after[target]["spec"]["template"]["spec"], before[target]["spec"]["template"]["spec"]
    container, old_container = pod["containers"][0], old_pod["containers"][0]
    # ours first, unchanged (the step's spec in CONVEYOR_STEP_SPEC leaves out its `pod:`), then the user's
    n = len(old_container["env"])
    assert container["env"][:n] == old_container["env"]
    assert container["env"][n:] == POD_SETTINGS["env"]
    assert container["envFrom"] == POD_SETTINGS["envFrom"]
    assert container["volumeMounts"] == old_container["volumeMounts"] + POD_SETTINGS["volumeMounts"]
    assert pod["volumes"] == old_pod["volumes"] + POD_SETTINGS["volumes"]
    for key in POD_LEVEL:
        assert pod[key] == POD_SETTINGS[key], key
    # a pod that names its service account gets its token mounted (ours mount none)
    assert old_pod["automountServiceAccountToken"] is False and pod["automountServiceAccountToken"] is True
    # the operator's other settings are untouched by the merge
    ours = {*POD_LEVEL, "volumes", "containers", "automountServiceAccountToken"}
    assert {k: v for k, v in pod.items() if k not in ours} == {k: v for k, v in old_pod.items() if k not in ours}
    assert {k: v for k, v in container.items() if k not in {"env", "envFrom", "volumeMounts"}} == {
        k: v for k, v in old_container.items() if k not in {"env", "volumeMounts"}
    }
    kubernetes_validate.validate(after[target], "1.36.0", strict=True)


def test_render_without_pod_settings_sets_none_of_their_pod_fields() -> None:
    for name, deployment in _deployments(_spec()).items():
        pod = deployment["spec"]["template"]["spec"]
        assert not set(POD_LEVEL) & pod.keys(), name
        assert "envFrom" not in pod["containers"][0], name


def _step_pod(model: dict[str, Any] | None = None, config: dict[str, Any] | None = None, **step: Any) -> dict[str, Any]:
    kind: dict[str, Any] = {"model": model} if model is not None else {"op": "identity", "config": config or {}}
    spec = PipelineSpec.model_validate({"steps": [{"name": "cls", **kind, **step}]})
    pod: dict[str, Any] = _deployments(spec, "registry/conveyor:1")["demo-cls"]["spec"]["template"]["spec"]
    return pod


S3_MODEL = {"uri": "s3://models/resnet.onnx", "sha256": "a" * 64, "credentialsSecret": "s3-creds", "cacheSizeLimit": "2Gi"}


def test_render_a_remote_model_is_fetched_by_an_init_container_into_a_size_limited_volume() -> None:
    pod = _step_pod(S3_MODEL, image="me/custom:1", resources={"cpu": "1", "memory": "1Gi", "gpu": 1})
    (fetch,) = pod["initContainers"]
    step = pod["containers"][0]
    assert fetch["name"] == "fetch" and fetch["command"] == ["conveyor", "fetch"]
    assert fetch["image"] == step["image"] == "me/custom:1" and fetch["imagePullPolicy"] == step["imagePullPolicy"]
    env = {e["name"]: e.get("value") for e in fetch["env"]}
    step_env = {e["name"]: e.get("value") for e in step["env"]}
    assert env["CONVEYOR_STEP_SPEC"] == step_env["CONVEYOR_STEP_SPEC"]
    assert env["CONVEYOR_MODEL_CACHE"] == step_env["CONVEYOR_MODEL_CACHE"] == "/var/lib/conveyor/models"
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert "envFrom" not in step  # the credentials stay with the fetch
    assert fetch["securityContext"] == step["securityContext"]
    assert fetch["terminationMessagePolicy"] == step["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert fetch["resources"] == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}  # no GPU
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"] == {"name": "models", "emptyDir": {"sizeLimit": "2Gi"}}
    for container in (fetch, step):
        assert {"name": "models", "mountPath": "/var/lib/conveyor/models"} in container["volumeMounts"]


def test_render_a_remote_uri_in_an_op_config_is_fetched_too_without_credentials() -> None:
    pod = _step_pod(config={"labels": {"file": "https://example.com/labels.txt"}, "k": 5})
    (fetch,) = pod["initContainers"]
    assert "envFrom" not in fetch
    assert {v["name"]: v for v in pod["volumes"]}["models"]["emptyDir"] == {"sizeLimit": "8Gi"}


@pytest.mark.parametrize(
    "kind",
    [{"model": {"path": "models/m.onnx"}}, {"model": {"uri": "file:///m.onnx"}}, {"model": {"uri": "pvc://claim/m.onnx"}},
     {"config": {"labels": "/etc/labels.txt", "url": "not a uri"}}],
    ids=["path", "file-uri", "pvc", "local-config"],
)
def test_render_a_local_model_or_config_needs_no_fetch(kind: dict[str, Any]) -> None:
    pod = _step_pod(**kind)
    assert "initContainers" not in pod
    assert "models" not in {v["name"] for v in pod["volumes"]}
    assert "CONVEYOR_MODEL_CACHE" not in {e["name"] for e in pod["containers"][0]["env"]}


def test_render_a_pvc_model_mounts_its_claim_read_only_where_the_step_looks() -> None:
    pod = _step_pod({"uri": "pvc://trained-models/resnet/v3/model.onnx"})
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-pvc"] == {"name": "model-pvc", "persistentVolumeClaim": {"claimName": "trained-models", "readOnly": True}}
    step = pod["containers"][0]
    assert {"name": "model-pvc", "mountPath": "/var/lib/conveyor/pvc/trained-models", "readOnly": True} in step["volumeMounts"]
    assert {"name": "CONVEYOR_PVC_ROOT", "value": "/var/lib/conveyor/pvc"} in step["env"]


@pytest.mark.parametrize("model", [S3_MODEL, {"uri": "pvc://trained-models/m.onnx"}], ids=["s3", "pvc"])
def test_render_model_sources_are_valid_kubernetes_objects_with_pod_settings(model: dict[str, Any]) -> None:
    spec = PipelineSpec.model_validate({"steps": [{"name": "cls", "model": model, "pod": POD_SETTINGS}]})
    deployment = _deployments(spec)["demo-cls"]
    kubernetes_validate.validate(deployment, "1.36.0", strict=True)
    pod = deployment["spec"]["template"]["spec"]
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        assert container["env"][-2:] == POD_SETTINGS["env"] and container["volumeMounts"][-1] == POD_SETTINGS["volumeMounts"][0]


def test_render_a_change_of_model_uri_or_digest_changes_only_that_steps_pods() -> None:
    def templates(model: dict[str, Any]) -> dict[str, Any]:
        spec = PipelineSpec.model_validate({"steps": [{"name": "pre", "op": "identity"}, {"name": "cls", "model": model}]})
        return {name: d["spec"]["template"] for name, d in _deployments(spec).items()}

    base = templates(S3_MODEL)
    for change in ({"uri": "s3://models/resnet-v2.onnx"}, {"sha256": "b" * 64}):
        changed = templates({**S3_MODEL, **change})
        assert changed["demo-cls"] != base["demo-cls"], change
        assert changed["demo-pre"] == base["demo-pre"] and changed["demo-gateway"] == base["demo-gateway"], change


def test_render_a_change_of_a_steps_image_changes_only_that_steps_pods() -> None:
    def templates(image: str | None) -> dict[str, Any]:
        spec = PipelineSpec.model_validate({"steps": [{"name": "pre", "op": "identity"}, {"name": "cls", "op": "topk", "image": image}]})
        return {name: d["spec"]["template"] for name, d in _deployments(spec).items()}

    base, changed = templates("me/ops:1"), templates("me/ops:2")
    assert changed["demo-cls"] != base["demo-cls"]
    assert changed["demo-pre"] == base["demo-pre"] and changed["demo-gateway"] == base["demo-gateway"]


def test_render_pod_settings_are_copies_of_the_specs_values() -> None:
    spec = PipelineSpec.model_validate({"steps": [{"name": "cls", "op": "identity", "pod": POD_SETTINGS}]})
    pod = _deployments(spec)["demo-cls"]["spec"]["template"]["spec"]
    pod["volumes"][-1]["name"] = "changed"
    pod["affinity"]["podAntiAffinity"] = {}
    assert spec.steps[0].pod.volumes[-1]["name"] == "labels" and spec.steps[0].pod.affinity == POD_SETTINGS["affinity"]
