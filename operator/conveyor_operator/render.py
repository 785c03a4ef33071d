"""The children of an InferencePipeline, rendered as plain manifests (pure functions, no API calls).

Per step: a Deployment and a headless Service; for the pipeline: the gateway Deployment and Service and a
ConfigMap holding the manifest the gateway reads. A step that runs in the processes of another (`inProcessWith`,
a guest) has no Deployment: its Service selects its host's pods, which serve it.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from conveyor_runtime.errors import FieldError
from conveyor_runtime.spec import (
    API_GROUP,
    API_VERSION,
    KIND,
    METRICS_PORT,
    STEP_GRPC_PORT,
    PipelineSpec,
    ResourcesSpec,
    StepSpec,
    gateway_resource_name,
    graph_configmap_name,
    guests_of,
    step_resource_name,
    step_to_env,
)
from conveyor_runtime.spec.model import MODEL_CACHE_DIR, PVC_ROOT, ModelSpec, PodSettings
from conveyor_runtime.spec.uris import is_remote_uri, uri_scheme

from .labels import DEFAULT_IMAGE, labels, selector_labels

__all__ = [
    "MANIFEST_DIR",
    "MANIFEST_KEY",
    "WORK_DIR",
    "Owner",
    "name_errors",
    "pipeline_manifest",
    "render_children",
    "render_gateway_deployment",
    "render_gateway_service",
    "render_graph_configmap",
    "render_step_deployment",
    "render_step_service",
]

#: The writable working directory of every pod (an emptyDir): relative model paths land here.
WORK_DIR = "/var/lib/conveyor"
MANIFEST_DIR = "/etc/conveyor"
MANIFEST_KEY = "pipeline.yaml"
#: Long enough for a step to finish its queued batches after SIGTERM.
TERMINATION_GRACE_SECONDS = 30
#: After SIGTERM the gateway reports not ready but keeps answering this long, while Services drop its endpoint...
GATEWAY_PRE_STOP_SECONDS = 5
#: ... then finishes the requests in flight within this long (both well inside TERMINATION_GRACE_SECONDS).
GATEWAY_DRAIN_SECONDS = 15
#: Pods run as this unprivileged user (the image's `conveyor` user).
RUN_AS_USER = 10001

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Owner:
    """The InferencePipeline that owns the children (its uid makes the owner reference)."""

    name: str
    namespace: str
    uid: str = ""

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def name_errors(pipeline: str, spec: PipelineSpec) -> list[FieldError]:
    """Names that would make invalid child names (the CRD's CEL rules say the same, for older objects)."""
    errors = []
    if not _DNS1035.match(pipeline) or len(pipeline) > 40:
        errors.append(FieldError("metadata.name", "must be a DNS-1035 label (lower-case letter first) of at most 40 characters"))
    for index, step in enumerate(spec.steps):
        child = step_resource_name(pipeline, step.name)
        if len(child) > 63:
            errors.append(
                FieldError(f"spec.steps[{index}].name", f"{child!r} (pipeline-step) is longer than 63 characters; shorten either")
            )
    return errors


def _metadata(owner: Owner, name: str, component: str, step: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": owner.namespace, "labels": labels(owner.name, component, step)}
    if owner.uid:
        meta["ownerReferences"] = [owner.reference()]
    return meta


def _resources(resources: ResourcesSpec) -> dict[str, Any]:
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if resources.cpu:
        requests["cpu"] = resources.cpu
    if resources.memory:
        requests["memory"] = resources.memory
        limits["memory"] = resources.memory
    if resources.gpu:
        limits["nvidia.com/gpu"] = resources.gpu
    result: dict[str, Any] = {}
    if requests:
        result["requests"] = requests
    if limits:
        result["limits"] = limits
    return result


def _container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _termination_message() -> dict[str, Any]:
    """`conveyor` writes why it stopped to the default path (the operator quotes it in Degraded); a crash that wrote
    nothing shows the tail of its log instead."""
    return {"terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "FallbackToLogsOnError"}


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _scratch_volumes() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """emptyDirs for the working directory and /tmp, so a read-only root filesystem still runs model builders."""
    volumes = [{"name": "work", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    mounts = [{"name": "work", "mountPath": WORK_DIR}, {"name": "tmp", "mountPath": "/tmp"}]
    return volumes, mounts


def _env(values: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"name": key, "value": value} for key, value in values.items()]


def _base_env(pipeline: str) -> dict[str, str]:
    return {"CONVEYOR_PIPELINE": pipeline, "HOME": WORK_DIR, "PYTHONUNBUFFERED": "1"}


def _deployment(
    owner: Owner,
    name: str,
    component: str,
    step: str | None,
    replicas: int,
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    pod_extra: Mapping[str, Any],
    annotations: Mapping[str, str],
) -> dict[str, Any]:
    pod_labels = labels(owner.name, component, step)
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security(),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "containers": [container],
        "volumes": volumes,
        **pod_extra,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, name, component, step),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(owner.name, component, step)},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": dict(annotations)},
                "spec": pod_spec,
            },
        },
    }


def _with_pod_settings(deployment: dict[str, Any], settings: PodSettings) -> dict[str, Any]:
    """`deployment` with the user's `pod:` settings merged in: lists after the operator's own entries, pod-level
    fields set when given. Clashes with what the operator renders are refused earlier (PodSettings, the CRD).
    Values are copied: the rendered objects never share a dict with the (frozen) spec."""
    settings = settings.model_copy(deep=True)
    pod = deployment["spec"]["template"]["spec"]
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        _with_container_settings(container, settings)
    pod["volumes"] = [*pod["volumes"], *settings.volumes]
    for key in _POD_LEVEL_SETTINGS:
        value = getattr(settings, key)
        if value:
            pod[key] = value
    if settings.serviceAccountName:
        pod["automountServiceAccountToken"] = True  # a step that names its account is there to use its token
    return deployment


#: `pod:` settings that go on the pod itself (the others go on its containers).
_POD_LEVEL_SETTINGS = (
    "imagePullSecrets",
    "serviceAccountName",
    "affinity",
    "topologySpreadConstraints",
    "priorityClassName",
    "runtimeClassName",
)


def _with_container_settings(container: dict[str, Any], settings: PodSettings) -> None:
    container["env"] = [*container.get("env", []), *settings.env]
    if settings.envFrom:
        container["envFrom"] = [*container.get("envFrom", []), *settings.envFrom]
    container["volumeMounts"] = [*container.get("volumeMounts", []), *settings.volumeMounts]


def _metrics_annotations() -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT), "prometheus.io/path": "/metrics"}


def _has_remote_uri(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(_has_remote_uri(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_remote_uri(item) for item in value)
    return is_remote_uri(value)


def _model_sources(step: StepSpec, container: dict[str, Any], volumes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mount what the step's model or config come from; the init containers that fetch them, if any.

    A remote model (or a remote URI in an op's config) is fetched by `conveyor fetch` into a size-limited emptyDir
    before the step starts, with the Secret's keys as its environment; the step finds the file there. A `pvc://`
    model's claim is mounted read-only where the step resolves it.
    """
    model = step.model
    uri = model.uri if model is not None else None
    if uri is not None and uri_scheme(uri) == "pvc":
        claim = uri.split("://", 1)[1].split("/", 1)[0]
        volumes.append({"name": "model-pvc", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        container["volumeMounts"].append({"name": "model-pvc", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True})
        container["env"].extend(_env({"CONVEYOR_PVC_ROOT": PVC_ROOT}))
    if not (is_remote_uri(uri) or _has_remote_uri(step.config)):
        return []
    size = model.cacheSizeLimit if model is not None else ModelSpec.model_fields["cacheSizeLimit"].default
    volumes.append({"name": "models", "emptyDir": {"sizeLimit": size}})
    container["volumeMounts"].append({"name": "models", "mountPath": MODEL_CACHE_DIR})
    container["env"].extend(_env({"CONVEYOR_MODEL_CACHE": MODEL_CACHE_DIR}))
    resources = _resources(step.resources.model_copy(update={"gpu": 0}))
    fetch = {
        **copy.deepcopy(
            {key: container[key] for key in ("image", "imagePullPolicy", "workingDir", "env", "securityContext", "volumeMounts")}
        ),
        "name": "fetch",
        "command": ["conveyor", "fetch"],
        "resources": resources,
        **_termination_message(),
    }
    if model is not None and model.credentialsSecret:
        fetch["envFrom"] = [{"secretRef": {"name": model.credentialsSecret}}]
    return [fetch]


def render_step_deployment(owner: Owner, step: StepSpec, image: str, guests: Sequence[StepSpec] = ()) -> dict[str, Any]:
    """A step's Deployment: `conveyor step` with the step spec in its environment, probed over grpc.health.v1;
    a remote model is fetched first by an init container (see `_model_sources`). `guests` are the steps that run
    in its processes (`inProcessWith` it): their specs are in its environment too."""
    volumes, mounts = _scratch_volumes()
    grpc_probe = {"grpc": {"port": STEP_GRPC_PORT}}
    container: dict[str, Any] = {
        "name": "step",
        "image": step.image or image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["conveyor", "step", "--port", str(STEP_GRPC_PORT), "--metrics-port", str(METRICS_PORT)],
        "workingDir": WORK_DIR,
        "env": _env({**_base_env(owner.name), "CONVEYOR_STEP": step.name, **step_to_env(step, guests)}),
        "ports": [
            {"name": "grpc", "containerPort": STEP_GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # Building or loading a model may take minutes: the startup probe holds liveness off until it serves.
        "startupProbe": {**grpc_probe, "periodSeconds": 5, "failureThreshold": 120},
        "readinessProbe": {**grpc_probe, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {**grpc_probe, "periodSeconds": 10, "failureThreshold": 3},
        "resources": _resources(step.resources),
        "securityContext": _container_security(),
        "volumeMounts": mounts,
        **_termination_message(),
    }
    pod_extra: dict[str, Any] = {}
    init_containers = _model_sources(step, container, volumes)
    if init_containers:
        pod_extra["initContainers"] = init_containers
    if step.nodeSelector:
        pod_extra["nodeSelector"] = dict(step.nodeSelector)
    if step.tolerations:
        pod_extra["tolerations"] = [dict(t) for t in step.tolerations]
    deployment = _deployment(
        owner,
        step_resource_name(owner.name, step.name),
        "step",
        step.name,
        step.replicas,
        container,
        volumes,
        pod_extra,
        _metrics_annotations(),
    )
    return _with_pod_settings(deployment, step.pod)


def render_step_service(owner: Owner, step: StepSpec) -> dict[str, Any]:
    """A step's headless Service: its DNS name resolves to every ready replica, which the gateway balances over.

    A guest's (`inProcessWith`) selects its host's pods, which serve it: whoever calls the step by name reaches them.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, step_resource_name(owner.name, step.name), "step", step.name),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(owner.name, "step", step.inProcessWith or step.name),
            "ports": [{"name": "grpc", "port": STEP_GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"}],
            "publishNotReadyAddresses": False,
        },
    }


def pipeline_manifest(owner: Owner, spec: PipelineSpec) -> str:
    """The manifest the gateway loads (`conveyor gateway --manifest`): the CR's spec with defaults made explicit."""
    document = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": owner.name, "namespace": owner.namespace},
        "spec": spec.model_dump(mode="json", exclude_none=True),
    }
    return yaml.safe_dump(document, sort_keys=False)


def _gateway_view(spec: PipelineSpec) -> PipelineSpec:
    """`spec` as far as the gateway's pods care: the graph (step names, inputs, output) and the gateway's own
    settings. Everything else belongs to one step's pods: a step's model, op and config (the gateway asks the step
    for its tensor names, again whenever the step's replicas change), its batching, resources, placement and replica
    count. Editing those must not roll the gateway."""
    return spec.model_copy(
        update={
            "steps": [StepSpec(name=step.name, inputs=step.inputs, op="identity") for step in spec.steps],
            "gateway": spec.gateway.model_copy(update={"replicas": 1}),
        }
    )


def render_graph_configmap(owner: Owner, spec: PipelineSpec) -> dict[str, Any]:
    """The ConfigMap mounted into the gateway at /etc/conveyor/pipeline.yaml."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, graph_configmap_name(owner.name), "gateway"),
        "data": {MANIFEST_KEY: pipeline_manifest(owner, spec)},
    }


def render_gateway_deployment(owner: Owner, spec: PipelineSpec, image: str) -> dict[str, Any]:
    """The gateway's Deployment; its pods roll when the graph changes (a hash of the manifest as the gateway sees
    it is annotated: see `_gateway_view`), never when a replica count or a step's batching does."""
    gateway = spec.gateway
    volumes, mounts = _scratch_volumes()
    volumes.append({"name": "graph", "configMap": {"name": graph_configmap_name(owner.name)}})
    mounts.append({"name": "graph", "mountPath": MANIFEST_DIR, "readOnly": True})
    manifest_hash = hashlib.sha256(pipeline_manifest(owner, _gateway_view(spec)).encode()).hexdigest()[:16]
    # Ready while the gateway serves, whatever its steps do: one step's outage then reaches clients as UNAVAILABLE
    # naming the step, not as a refused connection (/v2/health/ready keeps meaning "every step ready").
    http_probe = {"httpGet": {"path": "/gateway/ready", "port": "http"}}
    container: dict[str, Any] = {
        "name": "gateway",
        "image": gateway.image or image,
        "imagePullPolicy": "IfNotPresent",
        "command": [
            "conveyor",
            "gateway",
            "--manifest",
            f"{MANIFEST_DIR}/{MANIFEST_KEY}",
            "--grpc-port",
            str(gateway.grpcPort),
            "--http-port",
            str(gateway.httpPort),
            "--metrics-port",
            str(METRICS_PORT),
            "--step-port",
            str(STEP_GRPC_PORT),
            "--pre-stop",
            str(GATEWAY_PRE_STOP_SECONDS),
            "--grace",
            str(GATEWAY_DRAIN_SECONDS),
        ],
        "workingDir": WORK_DIR,
        "env": _env(_base_env(owner.name)),
        "ports": [
            {"name": "grpc", "containerPort": gateway.grpcPort, "protocol": "TCP"},
            {"name": "http", "containerPort": gateway.httpPort, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {**http_probe, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10, "failureThreshold": 3},
        "resources": _resources(gateway.resources),
        "securityContext": _container_security(),
        "volumeMounts": mounts,
        **_termination_message(),
    }
    annotations = {**_metrics_annotations(), f"{API_GROUP}/manifest-sha256": manifest_hash}
    deployment = _deployment(
        owner,
        gateway_resource_name(owner.name),
        "gateway",
        None,
        gateway.replicas,
        container,
        volumes,
        {},
        annotations,
    )
    return _with_pod_settings(deployment, gateway.pod)


def render_gateway_service(owner: Owner, spec: PipelineSpec) -> dict[str, Any]:
    """The gateway's ClusterIP Service: the pipeline's endpoint (gRPC and HTTP)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, gateway_resource_name(owner.name), "gateway"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner.name, "gateway"),
            "ports": [
                {"name": "grpc", "port": spec.gateway.grpcPort, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "http", "port": spec.gateway.httpPort, "targetPort": "http", "protocol": "TCP"},
            ],
        },
    }


def render_children(owner: Owner, spec: PipelineSpec, default_image: str = DEFAULT_IMAGE) -> list[dict[str, Any]]:
    """Every child, in apply order: the graph ConfigMap, each step's Service and Deployment (none for a step that
    runs in another's processes), then the gateway.

    The image is the step's or the gateway's own `image`, else `spec.image`, else `default_image` (the operator's
    CONVEYOR_IMAGE).
    """
    image = spec.image or default_image
    children = [render_graph_configmap(owner, spec)]
    for step in spec.steps:
        children.append(render_step_service(owner, step))
        if step.inProcessWith is None:
            children.append(render_step_deployment(owner, step, image, guests_of(spec, step.name)))
    children.append(render_gateway_service(owner, spec))
    children.append(render_gateway_deployment(owner, spec, image))
    return children
