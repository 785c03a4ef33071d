"""The typed model of an InferencePipeline: the one schema behind the CRD, the operator, each step and `conveyor run`.

Field names are the manifest's camelCase names; `crds/` is generated from these classes (`conveyor crd`).
"""

from __future__ import annotations

import copy
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from .pod_schemas import POD_FIELD_SCHEMAS
from .uris import URI_FORMS, uri_problem

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "BUILD_RULE",
    "BUILTIN_OP_NAMES",
    "CONFIG_RULE",
    "DNS1035_LABEL",
    "DNS1035_RULE",
    "DNS1123_LABEL",
    "DNS1123_RULE",
    "GPU_INSTANCES_RULE",
    "GPU_MEMORY_RULE",
    "IMPORT_REF",
    "KIND",
    "MAX_NAME",
    "MODEL_SOURCE_RULE",
    "OP_RULE",
    "RESERVED_ENV",
    "RESERVED_MOUNT_PATHS",
    "RESERVED_VOLUMES",
    "TWO_AUTOSCALERS_RULE",
    "AutoscalingSpec",
    "BatchingSpec",
    "GatewaySpec",
    "Metadata",
    "ModelSpec",
    "PipelineManifest",
    "PipelineSpec",
    "PodSettings",
    "ResourcesSpec",
    "StepSpec",
]

API_GROUP = "conveyor.dev"
API_VERSION = "v1alpha1"
KIND = "InferencePipeline"

#: A DNS-1123 label; step names become parts of Deployment and Service names (`<pipeline>-<step>`).
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: A DNS-1035 label: a pipeline's name starts its Service names, and a Service name must start with a letter.
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS1123_RULE = "must be a DNS-1123 label: lower-case letters, digits and '-', starting and ending with a letter or digit"
DNS1035_RULE = (
    "must be a DNS-1035 label: lower-case letters, digits and '-', starting with a letter and ending with a letter or digit"
)
#: Longest pipeline or step name (so that most `<pipeline>-<step>` pairs fit in a 63-character Service name).
MAX_NAME = 40
#: `package.module:Attribute`: ASCII and no escapes, so that Python, pydantic, and CEL and RE2 in the API server agree.
IMPORT_REF = r"^[A-Za-z_][A-Za-z0-9_]*([.][A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
#: Built-in op names, the keys of conveyor_runtime.ops.BUILTIN_OPS (a test keeps the two equal); any other op
#: must be an import reference.
BUILTIN_OP_NAMES: tuple[str, ...] = ("identity", "image-preprocess", "preprocess", "topk")
#: What `op:` must be, in words (the model's and the CRD's errors say the same).
OP_RULE = f"must be a built-in op (built-ins: {', '.join(BUILTIN_OP_NAMES)}) or `package.module:Class`"
#: `config` on a model step would be ignored.
CONFIG_RULE = "only op steps take `config`; a model step's settings go under `model`"
#: `externalAutoscaler` and `autoscaling` would both set the step's replicas.
TWO_AUTOSCALERS_RULE = "`autoscaling` and `externalAutoscaler: true` would both set this step's replicas: keep one"
#: `resources.gpuMemory` caps ONNX Runtime's GPU memory, so it means nothing elsewhere.
GPU_MEMORY_RULE = "`gpuMemory` applies to model steps on device cuda or tensorrt only: remove it, or set model.device"
#: Each model instance runs on one GPU (instance i on GPU i % gpu): more GPUs than instances would leave some idle.
GPU_INSTANCES_RULE = (
    "`gpu` is more than model.instances, and each instance runs on one GPU: set model.instances to at least `gpu`, "
    "or ask for fewer GPUs"
)
#: A model's one source, in words (the model's and the CRD's errors say the same).
MODEL_SOURCE_RULE = "a model needs exactly one of `path` or `uri`"
#: `build` writes a local file.
BUILD_RULE = "writes the local file at `path` when it is missing: use it with `path`, not `uri`"
#: A sha256 digest as `sha256sum` prints it.
SHA256_HEX = r"^[0-9a-f]{64}$"
#: A DNS-1123 subdomain: what a Secret's name must be.
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A Kubernetes quantity in the forms a size limit takes (`8Gi`, `500M`, `1.5Gi`).
QUANTITY = r"^[0-9]+(\.[0-9]+)?([EPTGMK]i?|[numk])?$"
#: ModelSpec's source fields: the pattern each must match and the rule in words.
_SOURCE_FIELD_RULES = {
    "sha256": (SHA256_HEX, "must be 64 lower-case hex digits (what `sha256sum FILE` prints)"),
    "credentialsSecret": (DNS1123_SUBDOMAIN, "must be a Secret name (lower-case letters, digits, '-' and '.')"),
    "cacheSizeLimit": (QUANTITY, "must be a Kubernetes quantity such as 8Gi or 500Mi"),
}


def _checked(value: str, pattern: str, rule: str) -> str:
    if not re.fullmatch(pattern, value):
        raise ValueError(rule)
    return value


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingSpec(_Spec):
    """Dynamic batching of one step. ``maxBatchSize`` counts rows, not requests; 0 disables batching."""

    maxBatchSize: int = Field(8, ge=0, le=4096, description="Largest batch in rows; 0 = never batch (fixed batch dimension).")
    maxQueueDelayMicroseconds: int = Field(
        1000, ge=0, le=10_000_000, description="policy fill: how long the first queued item may wait for others."
    )
    preferredBatchSizes: list[int] = Field(
        default_factory=list, description="Batch sizes to send as soon as they are reached (and to warm up)."
    )
    maxQueueSize: int = Field(1024, ge=1, le=1_000_000, description="Queued rows beyond which requests get RESOURCE_EXHAUSTED.")
    maxConcurrentBatches: int = Field(0, ge=0, le=64, description="Batches computed at once; 0 = one per model instance.")
    policy: Literal["workConserving", "fill"] = Field(
        "workConserving",
        description=(
            "When a batch leaves. workConserving: an idle model instance takes what is queued at once (batches grow "
            "while every instance is busy; maxQueueDelayMicroseconds is not used). fill: a batch waits up to "
            "maxQueueDelayMicroseconds for maxBatchSize or a preferred size, even with an idle instance."
        ),
    )

    @model_validator(mode="after")
    def _preferred_within_max(self) -> BatchingSpec:
        for size in self.preferredBatchSizes:
            if size < 1 or (self.maxBatchSize and size > self.maxBatchSize):
                raise ValueError(
                    f"preferredBatchSizes: each must be in 1..maxBatchSize ({self.maxBatchSize}), got {size}"
                )
        return self


class ModelSpec(_Spec):
    """An ONNX model run by ONNX Runtime, read from `path` or fetched from `uri` (exactly one of the two)."""

    path: str | None = Field(None, min_length=1, description="ONNX file; relative paths are relative to the manifest.")
    uri: str | None = Field(
        None,
        description="Where the ONNX file comes from: a path, file://, http(s)://, s3://, gs://, az:// (downloaded once into "
        "the model cache) or pvc://CLAIM/PATH (the claim mounted read-only). Exactly one of `path` or `uri`.",
    )
    sha256: str | None = Field(
        None,
        json_schema_extra={"pattern": SHA256_HEX},
        description="Digest the fetched file must have (64 lower-case hex digits); a mismatch fails the step.",
    )
    credentialsSecret: str | None = Field(
        None,
        max_length=253,
        json_schema_extra={"pattern": DNS1123_SUBDOMAIN},
        description="Secret in the pipeline's namespace whose keys (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...) are the "
        "fetch's environment.",
    )
    cacheSizeLimit: str = Field(
        "8Gi", json_schema_extra={"pattern": QUANTITY}, description="Size limit of the pod's volume the model is fetched into."
    )
    device: Literal["cpu", "cuda", "tensorrt"] = Field("cpu", description="Preferred execution provider; CPU is the fallback.")
    precision: Literal["fp32", "fp16"] = Field("fp32", description="fp16 applies on GPU providers only.")
    instances: int = Field(1, ge=1, le=64, description="Model instances (sessions) in one process.")
    intraOpThreads: int = Field(0, ge=0, le=256, description="ONNX Runtime intra-op threads; 0 = its default.")
    interOpThreads: int = Field(0, ge=0, le=256, description="ONNX Runtime inter-op threads; 0 = its default.")
    adaptiveThreads: bool = Field(
        True,
        description="On CPU with several instances and intraOpThreads 0: a batch that leaves while nothing else computes "
        "or waits runs alone on one more session with all the step's CPU threads, while that is measured faster than an "
        "instance (a lone request is answered sooner); under load the instances compute side by side. Costs one more "
        "copy of the model in memory.",
    )
    build: str | None = Field(
        None,
        pattern=IMPORT_REF,
        description="`module:function` that writes the ONNX file at `path` when it is missing (used by the examples).",
    )
    buildArgs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for `build`.")

    @field_validator("uri")
    @classmethod
    def _uri_form(cls, value: str | None) -> str | None:
        problem = None if value is None else uri_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("sha256", "credentialsSecret", "cacheSizeLimit")
    @classmethod
    def _matches(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or info.field_name is None:
            return value
        pattern, rule = _SOURCE_FIELD_RULES[info.field_name]
        return _checked(value, pattern, f"{rule}, got {value!r}")

    @field_validator("build")
    @classmethod
    def _build_with_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("uri") is not None:
            raise ValueError(BUILD_RULE)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.path is None) == (self.uri is None):
            got = "neither" if self.path is None else "both"
            raise ValueError(f"{MODEL_SOURCE_RULE} (got {got}): `path` for a local file, `uri` for {URI_FORMS}")
        return self


class ResourcesSpec(_Spec):
    """What one replica of a step asks the cluster for."""

    gpu: int = Field(0, ge=0, le=16, description="nvidia.com/gpu per replica.")
    cpu: str | None = Field(None, pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPU request, e.g. `500m` or `2`.")
    memory: str | None = Field(
        None, pattern=r"^[0-9]+(\.[0-9]+)?([EPTGMK]i?|[numk])?$", description="Memory request and limit, e.g. `1Gi`."
    )
    gpuMemory: str | None = Field(
        None,
        pattern=r"^[0-9]+(\.[0-9]+)?(k|[MGTPE]|[KMGTPE]i)?$",
        description="GPU memory one replica's model may take, e.g. `4Gi` (ONNX Runtime's CUDA arena cap and TensorRT's "
        "workspace, split evenly over the instances on a GPU): lets several steps share one GPU. Model steps on "
        "`cuda` or `tensorrt` only.",
    )


#: Volumes and mount paths the operator gives every pod (work dir, /tmp, the gateway's manifest, fetched models,
#: a model's claim): a `pod:` setting may not reuse them.
RESERVED_VOLUMES: tuple[str, ...] = ("work", "tmp", "graph", "models", "model-pvc")
WORK_DIR = "/var/lib/conveyor"
MODEL_CACHE_DIR = f"{WORK_DIR}/models"
PVC_ROOT = f"{WORK_DIR}/pvc"
RESERVED_MOUNT_PATHS: tuple[str, ...] = (WORK_DIR, "/tmp", "/etc/conveyor", MODEL_CACHE_DIR, PVC_ROOT)
#: Environment the operator sets: `CONVEYOR_*` (the step's spec, the model cache, ...) and these.
RESERVED_ENV: tuple[str, ...] = ("HOME", "PYTHONUNBUFFERED")
#: Bounds on the `pod:` lists, so that the CRD's rules over them have a bounded cost.
MAX_POD_LIST = 64


def _kubernetes(field: str, max_items: int | None = None) -> Any:
    """The CRD schema of a `pod:` field: Kubernetes' own (see pod_schemas.py), bounded, and never defaulted.

    `default: None` marks every object node so that the CRD generator gives none of them its `{}` default: an empty
    `nodeAffinity` (say) would fail its own required fields, and an unset setting should stay unset.
    """

    def replace(schema: dict[str, Any]) -> None:
        kubernetes = copy.deepcopy(POD_FIELD_SCHEMAS[field])
        if max_items is not None:
            kubernetes["maxItems"] = max_items
        schema.clear()
        schema.update(_undefaulted(kubernetes))

    return replace


def _undefaulted(node: Any) -> Any:
    if isinstance(node, list):
        return [_undefaulted(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: (value if key in {"enum", "required"} else _undefaulted(value)) for key, value in node.items()}
    if out.get("type") == "object":
        out["default"] = None
    return out


def _names(items: list[dict[str, Any]], key: str = "name") -> list[str]:
    return [str(item.get(key, "")) for item in items]


class PodSettings(_Spec):
    """Kubernetes pod settings for one step's pods or the gateway's, merged into what the operator renders.

    Each key takes what a Pod (or its container) takes under the same name, and the CRD carries Kubernetes' own schema
    for it, so the API server checks it at `kubectl apply`. `conveyor run` ignores them.
    """

    env: list[dict[str, Any]] = Field(default_factory=list, json_schema_extra=_kubernetes("env", 256))
    envFrom: list[dict[str, Any]] = Field(default_factory=list, json_schema_extra=_kubernetes("envFrom", MAX_POD_LIST))
    volumes: list[dict[str, Any]] = Field(default_factory=list, json_schema_extra=_kubernetes("volumes", MAX_POD_LIST))
    volumeMounts: list[dict[str, Any]] = Field(
        default_factory=list, json_schema_extra=_kubernetes("volumeMounts", MAX_POD_LIST)
    )
    imagePullSecrets: list[dict[str, Any]] = Field(
        default_factory=list, json_schema_extra=_kubernetes("imagePullSecrets", MAX_POD_LIST)
    )
    serviceAccountName: str | None = Field(None, json_schema_extra=_kubernetes("serviceAccountName"))
    affinity: dict[str, Any] | None = Field(None, json_schema_extra=_kubernetes("affinity"))
    topologySpreadConstraints: list[dict[str, Any]] = Field(
        default_factory=list, json_schema_extra=_kubernetes("topologySpreadConstraints", MAX_POD_LIST)
    )
    priorityClassName: str | None = Field(None, json_schema_extra=_kubernetes("priorityClassName"))
    runtimeClassName: str | None = Field(None, json_schema_extra=_kubernetes("runtimeClassName"))

    @field_validator("volumes")
    @classmethod
    def _own_volume_names(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, name in enumerate(_names(value)):
            if name in RESERVED_VOLUMES:
                raise ValueError(f"[{index}].name {name!r} is the operator's; reserved: {', '.join(RESERVED_VOLUMES)}")
        return value

    @field_validator("volumeMounts")
    @classmethod
    def _own_mount_paths(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, path in enumerate(_names(value, "mountPath")):
            clean = path.rstrip("/") or "/"
            if clean in RESERVED_MOUNT_PATHS or clean.startswith((f"{MODEL_CACHE_DIR}/", f"{PVC_ROOT}/")):
                raise ValueError(
                    f"[{index}].mountPath {path!r} is the operator's; reserved: {', '.join(RESERVED_MOUNT_PATHS)} "
                    f"and below {MODEL_CACHE_DIR} and {PVC_ROOT}"
                )
        return value

    @field_validator("env")
    @classmethod
    def _own_env(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, name in enumerate(_names(value)):
            if name.startswith("CONVEYOR_") or name in RESERVED_ENV:
                raise ValueError(f"[{index}].name {name!r} is set by the operator (CONVEYOR_*, {', '.join(RESERVED_ENV)})")
        return value

    @model_serializer(mode="wrap")
    def _dump_set_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Only the settings given, so that a step's dump (its env, the gateway's manifest) stays short."""
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if value not in (None, [], {})}


class AutoscalingSpec(_Spec):
    """Replicas the operator sets from the step's measured capacity per replica and its arrival rate."""

    minReplicas: int = Field(1, ge=1, le=1000, description="Fewest replicas, also when no items arrive.")
    maxReplicas: int = Field(10, ge=1, le=1000, description="Most replicas.")
    targetUtilization: float = Field(
        0.7, ge=0.05, le=1, description="Share of its model instances' time a replica should be busy (0.05..1)."
    )
    scaleUpWindowSeconds: int = Field(
        30, ge=0, le=3600, description="Scale up only to the lowest recommendation of this many seconds."
    )
    scaleDownWindowSeconds: int = Field(
        180, ge=0, le=3600, description="Scale down only to the highest recommendation of this many seconds."
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.minReplicas > self.maxReplicas:
            raise ValueError(f"minReplicas ({self.minReplicas}) must not exceed maxReplicas ({self.maxReplicas})")
        return self


class StepSpec(_Spec):
    """One node of the pipeline's DAG: an ONNX model or an op, served with its own replicas and batching."""

    name: str = Field(..., min_length=1, max_length=MAX_NAME, json_schema_extra={"pattern": DNS1123_LABEL})
    inputs: list[str] | None = Field(None, description="Upstream step names; default: the previous step.")
    op: str | None = Field(
        None, max_length=256, description=f"Built-in op ({', '.join(BUILTIN_OP_NAMES)}) or `package.module:Class`."
    )
    model: ModelSpec | None = None
    config: dict[str, Any] = Field(default_factory=dict, description="Free-form settings handed to the op (op steps only).")
    replicas: int = Field(1, ge=0, le=1000)
    externalAutoscaler: bool = Field(
        False,
        description="An autoscaler of your own (an HPA, KEDA) sets this step's replicas: the operator then writes "
        "`replicas` only when it creates the Deployment and never puts a count back.",
    )
    autoscaling: AutoscalingSpec | None = Field(
        None, description="Let the operator set replicas from the measured load; `replicas` is then only the start."
    )
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    nodeSelector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    image: str | None = Field(None, min_length=1, description="Image of this step's pods; default: the pipeline's `image`.")
    pod: PodSettings = Field(default_factory=PodSettings, description="Pod settings of this step's pods.")
    inProcessWith: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_NAME,
        description="Run this step inside the processes of the named step, its neighbour in the graph (an in-process "
        "edge: tensors between them are handed over in memory, never serialized). It then has no pods of its own and "
        "scales with that step; pod settings (replicas, resources, image, pod, ...) go on that step.",
    )

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        return _checked(value, DNS1123_LABEL, DNS1123_RULE)

    @field_validator("op")
    @classmethod
    def _op_reference(cls, value: str | None) -> str | None:
        return value if value is None or value in BUILTIN_OP_NAMES else _checked(value, IMPORT_REF, OP_RULE)

    @field_validator("config")
    @classmethod
    def _config_for_ops_only(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # Runs only when `config` is given (as the CRD's `has(self.config)`, which cannot see inside it, even `{}`).
        # A step with both `op` and `model` gets the one-kind error instead.
        if info.data.get("model") is not None and info.data.get("op") is None:
            raise ValueError(CONFIG_RULE)
        return value

    @field_validator("autoscaling")
    @classmethod
    def _one_autoscaler(cls, value: AutoscalingSpec | None, info: ValidationInfo) -> AutoscalingSpec | None:
        if value is not None and info.data.get("externalAutoscaler"):
            raise ValueError(TWO_AUTOSCALERS_RULE)
        return value

    @field_validator("resources")
    @classmethod
    def _gpu_settings_used(cls, value: ResourcesSpec, info: ValidationInfo) -> ResourcesSpec:
        """GPU settings a step would not use are refused, not ignored (the CRD's rules on `resources` say the same)."""
        model = info.data.get("model")
        if value.gpuMemory is not None and (model is None or model.device == "cpu"):
            raise ValueError(GPU_MEMORY_RULE)
        if model is not None and value.gpu > max(1, model.instances):
            raise ValueError(GPU_INSTANCES_RULE)
        return value

    @model_serializer(mode="wrap")
    def _dump_without_model_config(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A model step's dump leaves out `config`, so that the dump validates again (the gateway's manifest)."""
        data: dict[str, Any] = handler(self)
        if self.model is not None and not self.config:
            data.pop("config", None)
        return data

    @model_validator(mode="after")
    def _one_kind(self) -> StepSpec:
        if (self.op is None) == (self.model is None):
            raise ValueError("a step needs exactly one of `op` or `model`")
        return self


class GatewaySpec(_Spec):
    """The pipeline's front door: one model named after the pipeline, over gRPC and HTTP."""

    replicas: int = Field(1, ge=0, le=1000)
    grpcPort: int = Field(8001, ge=1, le=65535)
    httpPort: int = Field(8000, ge=1, le=65535)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    image: str | None = Field(None, min_length=1, description="Image of the gateway's pods; default: the pipeline's `image`.")
    pod: PodSettings = Field(default_factory=PodSettings, description="Pod settings of the gateway's pods.")
    autoscaling: AutoscalingSpec | None = Field(
        None,
        description="Let the operator set the gateway's replicas from its measured load: a replica's capacity is the "
        "requests it answers per second of CPU (its event loop, about one core), `targetUtilization` that share busy.",
    )
    maxRequestBytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        le=2**31 - 1,
        description="Largest request accepted: a gRPC message, or an HTTP body after decompression. "
        "Larger ones get INVALID_ARGUMENT (HTTP 413).",
    )
    maxConcurrentRequests: int = Field(
        1024, ge=1, le=1_000_000, description="Requests in flight at once per gateway replica; more get RESOURCE_EXHAUSTED (HTTP 429) at once."
    )
    defaultTimeoutSeconds: float = Field(
        60.0, ge=0.001, le=86_400, description="Deadline of a request that carries none, applied at every hop."
    )
    dataPath: Literal["stepToStep", "gateway"] = Field(
        "stepToStep",
        description="stepToStep: a step sends its outputs straight to the next step of a chain (balanced, retried, "
        "within the request's deadline); the gateway carries only a request's inputs and its answer. gateway: every "
        "tensor between two steps goes through the gateway.",
    )


class PipelineSpec(_Spec):
    """A DAG of steps; the request enters the first step and the answer is `output`'s (default: the last)."""

    steps: list[StepSpec] = Field(..., min_length=1, max_length=64)
    output: str | None = Field(None, description="Step whose outputs answer the request; default: the last step.")
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    image: str | None = Field(
        None, description="Runtime image for the pods (a step's or the gateway's own `image` wins); default: the operator's."
    )


class Metadata(BaseModel):
    """The object's metadata: `name` is checked; whatever else Kubernetes keeps here (labels, uid, ...) is allowed."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(..., min_length=1, max_length=MAX_NAME)
    namespace: str | None = None

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        return _checked(value, DNS1035_LABEL, DNS1035_RULE)


class PipelineManifest(_Spec):
    """The whole `kubectl apply`-able document; any top-level field besides these is an error."""

    apiVersion: Literal["conveyor.dev/v1alpha1"]
    kind: Literal["InferencePipeline"]
    metadata: Metadata
    spec: PipelineSpec
    status: dict[str, Any] | None = Field(None, exclude=True, description="Written by the operator; not read here.")
