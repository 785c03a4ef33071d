"""The typed model of an InferencePipeline: the one schema behind the CRD, the operator, each step and `conveyor run`.

Field names are the manifest's camelCase names; `crds/` is generated from these classes (`conveyor crd`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "KIND",
    "BatchingSpec",
    "GatewaySpec",
    "Metadata",
    "ModelSpec",
    "PipelineManifest",
    "PipelineSpec",
    "ResourcesSpec",
    "StepSpec",
]

API_GROUP = "conveyor.dev"
API_VERSION = "v1alpha1"
KIND = "InferencePipeline"

#: A DNS-1123 label; step names become parts of Deployment and Service names.
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: `package.module:Attribute`
IMPORT_REF = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
_IMPORT_REF = re.compile(IMPORT_REF)
#: Built-in op names (see conveyor_runtime.ops); anything else must be an import reference.
BUILTIN_OP = r"^[a-z][a-z0-9_-]*$"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingSpec(_Spec):
    """Dynamic batching of one step. ``maxBatchSize`` counts rows, not requests; 0 disables batching."""

    maxBatchSize: int = Field(8, ge=0, le=4096, description="Largest batch in rows; 0 = never batch (fixed batch dimension).")
    maxQueueDelayMicroseconds: int = Field(
        1000, ge=0, le=10_000_000, description="How long the first queued item may wait for others."
    )
    preferredBatchSizes: list[int] = Field(
        default_factory=list, description="Batch sizes to send as soon as they are reached (and to warm up)."
    )
    maxQueueSize: int = Field(1024, ge=1, le=1_000_000, description="Queued rows beyond which requests get RESOURCE_EXHAUSTED.")
    maxConcurrentBatches: int = Field(0, ge=0, le=64, description="Batches computed at once; 0 = one per model instance.")

    @model_validator(mode="after")
    def _preferred_within_max(self) -> BatchingSpec:
        for size in self.preferredBatchSizes:
            if size < 1 or (self.maxBatchSize and size > self.maxBatchSize):
                raise ValueError(
                    f"preferredBatchSizes: each must be in 1..maxBatchSize ({self.maxBatchSize}), got {size}"
                )
        return self


class ModelSpec(_Spec):
    """An ONNX model run by ONNX Runtime."""

    path: str = Field(..., min_length=1, description="ONNX file; relative paths are relative to the manifest.")
    device: Literal["cpu", "cuda", "tensorrt"] = Field("cpu", description="Preferred execution provider; CPU is the fallback.")
    precision: Literal["fp32", "fp16"] = Field("fp32", description="fp16 applies on GPU providers only.")
    instances: int = Field(1, ge=1, le=64, description="Model instances (sessions) in one process.")
    intraOpThreads: int = Field(0, ge=0, le=256, description="ONNX Runtime intra-op threads; 0 = its default.")
    interOpThreads: int = Field(0, ge=0, le=256, description="ONNX Runtime inter-op threads; 0 = its default.")
    build: str | None = Field(
        None,
        pattern=IMPORT_REF,
        description="`module:function` that writes the ONNX file when it is missing (used by the examples).",
    )
    buildArgs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for `build`.")


class ResourcesSpec(_Spec):
    """What one replica of a step asks the cluster for."""

    gpu: int = Field(0, ge=0, le=16, description="nvidia.com/gpu per replica.")
    cpu: str | None = Field(None, pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPU request, e.g. `500m` or `2`.")
    memory: str | None = Field(
        None, pattern=r"^[0-9]+(\.[0-9]+)?([EPTGMK]i?|[numk])?$", description="Memory request and limit, e.g. `1Gi`."
    )


class StepSpec(_Spec):
    """One node of the pipeline's DAG: an ONNX model or an op, served with its own replicas and batching."""

    name: str = Field(..., min_length=1, max_length=40, pattern=DNS1123_LABEL)
    inputs: list[str] | None = Field(None, description="Upstream step names; default: the previous step.")
    op: str | None = Field(None, description="Built-in op name or `package.module:Class`.")
    model: ModelSpec | None = None
    config: dict[str, Any] = Field(default_factory=dict, description="Free-form settings handed to the op.")
    replicas: int = Field(1, ge=0, le=1000)
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    nodeSelector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("op")
    @classmethod
    def _op_reference(cls, value: str | None) -> str | None:
        if value is not None and not (_IMPORT_REF.match(value) or re.match(BUILTIN_OP, value)):
            raise ValueError(f"must be a built-in op name or `package.module:Class`, got {value!r}")
        return value

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


class PipelineSpec(_Spec):
    """A DAG of steps; the request enters the first step and the answer is `output`'s (default: the last)."""

    steps: list[StepSpec] = Field(..., min_length=1, max_length=64)
    output: str | None = Field(None, description="Step whose outputs answer the request; default: the last step.")
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    image: str | None = Field(None, description="Runtime image for the pods; default: the operator's.")


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(..., min_length=1, max_length=40, pattern=DNS1123_LABEL)
    namespace: str | None = None


class PipelineManifest(_Spec):
    """The whole `kubectl apply`-able document."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    apiVersion: Literal["conveyor.dev/v1alpha1"]
    kind: Literal["InferencePipeline"]
    metadata: Metadata
    spec: PipelineSpec
