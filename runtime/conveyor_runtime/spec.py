"""The one typed model of an InferencePipeline, shared by the CRD, the operator, each step and `conveyor run`.

Field names are the manifest's camelCase names. `parse_manifest` checks a whole manifest (schema, then the
graph) and raises `InvalidManifest` naming every broken field path, e.g. ``spec.steps[1].inputs[0]``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import FieldError, InvalidManifest

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "KIND",
    "BatchingSpec",
    "ModelSpec",
    "ResourcesSpec",
    "StepSpec",
    "GatewaySpec",
    "PipelineSpec",
    "Metadata",
    "PipelineManifest",
    "parse_manifest",
    "load_manifest",
    "graph_errors",
    "step_inputs",
    "topological_order",
    "output_step",
    "step_to_env",
    "step_from_env",
    "STEP_SPEC_ENV",
    "STEP_GRPC_PORT",
    "METRICS_PORT",
    "GATEWAY_STEP_NAME",
    "step_resource_name",
    "gateway_resource_name",
    "graph_configmap_name",
]

API_GROUP = "conveyor.dev"
API_VERSION = "v1alpha1"
KIND = "InferencePipeline"

#: A DNS-1123 label; step names become parts of Deployment and Service names.
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS1123 = re.compile(DNS1123_LABEL)
#: `package.module:Attribute`
IMPORT_REF = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
_IMPORT_REF = re.compile(IMPORT_REF)
#: Built-in op names (see conveyor_runtime.ops); anything else must be an import reference.
BUILTIN_OP = r"^[a-z][a-z0-9_-]*$"

STEP_SPEC_ENV = "CONVEYOR_STEP_SPEC"
#: Ports inside a step pod; the gateway's ports are GatewaySpec.grpcPort / httpPort.
STEP_GRPC_PORT = 9000
METRICS_PORT = 9090
#: Reserved: the gateway's resources are named `<pipeline>-gateway`, so no step may be called this.
GATEWAY_STEP_NAME = "gateway"
#: Batching overrides a cluster admin may set on a Deployment (`kubectl set env`) without editing the CR.
_BATCHING_ENV = {
    "maxBatchSize": "CONVEYOR_MAX_BATCH_SIZE",
    "maxQueueDelayMicroseconds": "CONVEYOR_MAX_QUEUE_DELAY_US",
    "maxQueueSize": "CONVEYOR_MAX_QUEUE_SIZE",
}


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


# --- graph -------------------------------------------------------------------------------------------


def step_inputs(spec: PipelineSpec) -> dict[str, list[str]]:
    """Each step's upstream step names, with the `inputs` default (previous step) applied."""
    result: dict[str, list[str]] = {}
    for index, step in enumerate(spec.steps):
        if step.inputs is not None:
            result[step.name] = list(step.inputs)
        else:
            result[step.name] = [spec.steps[index - 1].name] if index > 0 else []
    return result


def output_step(spec: PipelineSpec) -> str:
    """The step whose outputs answer a request."""
    return spec.output or spec.steps[-1].name


def graph_errors(spec: PipelineSpec, prefix: str = "spec") -> list[FieldError]:
    """Rules the schema cannot express: unique names, known inputs, one entry step, no cycles."""
    errors: list[FieldError] = []
    seen: dict[str, int] = {}
    for index, step in enumerate(spec.steps):
        if step.name in seen:
            errors.append(
                FieldError(f"{prefix}.steps[{index}].name", f"duplicate step name {step.name!r} (also steps[{seen[step.name]}])")
            )
        seen.setdefault(step.name, index)
    for index, step in enumerate(spec.steps):
        for j, name in enumerate(step.inputs or []):
            where = f"{prefix}.steps[{index}].inputs[{j}]"
            if name not in seen:
                errors.append(FieldError(where, f"unknown step {name!r}; known steps: {', '.join(seen)}"))
            elif name == step.name:
                errors.append(FieldError(where, "a step cannot be its own input"))
        if step.inputs is not None and len(set(step.inputs)) != len(step.inputs):
            errors.append(FieldError(f"{prefix}.steps[{index}].inputs", "lists a step more than once"))
        if step.name == GATEWAY_STEP_NAME:
            errors.append(FieldError(f"{prefix}.steps[{index}].name", f"{GATEWAY_STEP_NAME!r} is reserved for the pipeline's gateway"))
    if spec.output is not None and spec.output not in seen:
        errors.append(FieldError(f"{prefix}.output", f"unknown step {spec.output!r}"))
    if errors:
        return errors
    inputs = step_inputs(spec)
    entries = [s.name for s in spec.steps if not inputs[s.name]]
    if len(entries) != 1:
        errors.append(
            FieldError(f"{prefix}.steps", f"exactly one step may have no inputs (it receives the request), found {entries}")
        )
    cycle = _find_cycle(inputs)
    if cycle:
        first = next(i for i, s in enumerate(spec.steps) if s.name == cycle[0])
        errors.append(FieldError(f"{prefix}.steps[{first}].inputs", "cycle: " + " -> ".join(cycle + [cycle[0]])))
    return errors


def _find_cycle(inputs: Mapping[str, list[str]]) -> list[str]:
    """A cycle in the step graph as a list of names, or [] when the graph is acyclic."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(name: str) -> list[str]:
        state[name] = 1
        stack.append(name)
        for upstream in inputs.get(name, []):
            if state.get(upstream) == 1:
                return stack[stack.index(upstream) :]
            if upstream not in state:
                found = visit(upstream)
                if found:
                    return found
        stack.pop()
        state[name] = 2
        return []

    for name in inputs:
        if name not in state:
            found = visit(name)
            if found:
                return found
    return []


def topological_order(spec: PipelineSpec) -> list[str]:
    """Step names so that every step comes after all of its inputs (stable for the manifest's order)."""
    inputs = step_inputs(spec)
    done: list[str] = []
    remaining = [s.name for s in spec.steps]
    while remaining:
        ready = [n for n in remaining if all(u in done for u in inputs[n])]
        if not ready:
            raise InvalidManifest([FieldError("spec.steps", "the step graph has a cycle")])
        done.extend(ready)
        remaining = [n for n in remaining if n not in ready]
    return done


def step_resource_name(pipeline: str, step: str) -> str:
    """Name of a step's Deployment and headless Service (also its DNS name inside the namespace)."""
    return f"{pipeline}-{step}"


def gateway_resource_name(pipeline: str) -> str:
    """Name of the gateway's Deployment and Service."""
    return f"{pipeline}-{GATEWAY_STEP_NAME}"


def graph_configmap_name(pipeline: str) -> str:
    """Name of the ConfigMap that holds the pipeline manifest for the gateway."""
    return f"{pipeline}-graph"


# --- parsing -----------------------------------------------------------------------------------------


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in {"function-after", "function-before", "function-wrap"} or "[" in str(part):
            continue  # pydantic's validator frames, not fields
        else:
            path += f".{part}" if path else str(part)
    return path


def validation_field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    """Pydantic's errors as `FieldError`s with manifest paths (``spec.steps[1].batching.maxBatchSize``)."""
    result = []
    for err in exc.errors():
        path = _loc_to_path(tuple(err["loc"]))
        if prefix:
            path = f"{prefix}.{path}" if path and not path.startswith("[") else f"{prefix}{path}"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] not in {"missing", "extra_forbidden"} and "input" in err and not isinstance(err["input"], (dict, list)):
            message += f", got {err['input']!r}"
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        result.append(FieldError(path, message))
    return result


def parse_manifest(data: Any, source: str = "") -> PipelineManifest:
    """Validate a manifest (a parsed YAML/JSON document); raises `InvalidManifest` naming each broken field."""
    if not isinstance(data, Mapping):
        raise InvalidManifest([FieldError("", f"a manifest must be a mapping, got {type(data).__name__}")], source)
    try:
        manifest = PipelineManifest.model_validate(data)
    except ValidationError as exc:
        raise InvalidManifest(validation_field_errors(exc), source) from None
    errors = graph_errors(manifest.spec)
    if errors:
        raise InvalidManifest(errors, source)
    return manifest


def load_manifest(path: str | Path) -> PipelineManifest:
    """Read and validate a manifest file (the very file a user would `kubectl apply`)."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise InvalidManifest([FieldError("", f"cannot read {file}: {exc.strerror}")], str(file)) from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise InvalidManifest([FieldError("", f"not valid YAML: {exc}")], str(file)) from None
    pipelines = [d for d in documents if isinstance(d, Mapping) and d.get("kind") == KIND]
    if len(pipelines) != 1:
        raise InvalidManifest([FieldError("kind", f"expected one {KIND} document, found {len(pipelines)}")], str(file))
    return parse_manifest(pipelines[0], str(file))


# --- step spec in a pod's environment ------------------------------------------------------------------


def step_to_env(step: StepSpec) -> dict[str, str]:
    """The environment that hands a step its spec: the whole spec as JSON plus readable batching knobs."""
    env = {STEP_SPEC_ENV: step.model_dump_json(exclude_defaults=True)}
    for field, var in _BATCHING_ENV.items():
        env[var] = str(getattr(step.batching, field))
    return env


def step_from_env(environ: Mapping[str, str] | None = None) -> StepSpec:
    """Read a step's spec from the environment; batching variables, if set, override the JSON."""
    environ = os.environ if environ is None else environ
    raw = environ.get(STEP_SPEC_ENV)
    if not raw:
        raise InvalidManifest([FieldError(STEP_SPEC_ENV, "not set: a step needs its spec as JSON in this variable")])
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidManifest([FieldError(STEP_SPEC_ENV, f"not valid JSON: {exc}")]) from None
    if not isinstance(data, dict):
        raise InvalidManifest([FieldError(STEP_SPEC_ENV, "must be a JSON object")])
    batching = dict(data.get("batching") or {})
    for field, var in _BATCHING_ENV.items():
        if environ.get(var):
            try:
                batching[field] = int(environ[var])
            except ValueError:
                raise InvalidManifest([FieldError(var, f"must be an integer, got {environ[var]!r}")]) from None
    data["batching"] = batching
    try:
        return StepSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidManifest(validation_field_errors(exc, prefix="step")) from None
