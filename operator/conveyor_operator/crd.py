"""The InferencePipeline CustomResourceDefinition, generated from the typed spec and status models.

Pydantic's JSON schema is made structural: `$ref`s inlined, `Optional` turned into "may be absent",
free-form maps marked `x-kubernetes-preserve-unknown-fields`, nested models defaulted to `{}`, CEL rules added.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from conveyor_runtime.spec import (
    API_GROUP,
    API_VERSION,
    BUILTIN_OP_NAMES,
    CONFIG_RULE,
    DNS1035_LABEL,
    DNS1035_RULE,
    GATEWAY_STEP_NAME,
    GPU_INSTANCES_RULE,
    GPU_MEMORY_RULE,
    IMPORT_REF,
    KIND,
    MAX_NAME,
    MAX_SERVICE_NAME,
    OP_RULE,
    TWO_AUTOSCALERS_RULE,
    PipelineSpec,
)
from conveyor_runtime.spec.model import (
    BUILD_RULE,
    MODEL_CACHE_DIR,
    MODEL_SOURCE_RULE,
    PVC_ROOT,
    RESERVED_ENV,
    RESERVED_MOUNT_PATHS,
    RESERVED_VOLUMES,
)

from .status import PipelineStatus

__all__ = [
    "CRD_FILENAME",
    "CRD_NAME",
    "PLURAL",
    "SHORT_NAMES",
    "SINGULAR",
    "build_crd",
    "crd_yaml",
    "spec_schema",
    "status_schema",
    "structural_schema",
]

PLURAL = "inferencepipelines"
SINGULAR = "inferencepipeline"
SHORT_NAMES = ["ipl"]
CRD_NAME = f"{PLURAL}.{API_GROUP}"
CRD_FILENAME = f"{CRD_NAME}.yaml"

# JSON-schema keys that a structural schema does not take (or that only add noise to `kubectl explain`).
_DROPPED_KEYS = {"title", "$defs", "additionalProperties", "anyOf", "$ref", "default"}


def _cel_string(text: str) -> str:
    """`text` as a CEL string literal (the rule texts hold no double quotes or backslashes)."""
    if '"' in text or "\\" in text:
        raise ValueError(f"cannot quote {text!r} for CEL")
    return f'"{text}"'


_AUTOSCALING_BOUNDS = {
    "rule": "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
    "message": "minReplicas must not exceed maxReplicas",
}

#: Extra validation for the spec, keyed by the JSON-pointer-ish path of the schema node it goes on. Each says what
#: the spec model says (see conveyor_runtime.spec), so `kubectl apply` and `conveyor run` refuse the same things.
_SPEC_RULES: dict[str, list[dict[str, str]]] = {
    "steps": [
        {
            "rule": "self.all(s, self.exists_one(t, t.name == s.name))",
            "message": "step names must be unique",
        }
    ],
    "steps.items": [
        {
            "rule": "has(self.op) != has(self.model)",
            "message": "a step needs exactly one of `op` or `model`",
        },
        {
            # CEL cannot look inside a free-form object (not even its size), so any `config` on a model step is refused.
            "rule": "has(self.op) || !has(self.model) || !has(self.config)",
            "fieldPath": ".config",
            "message": CONFIG_RULE,
        },
        {
            "rule": "!has(self.resources) || !has(self.resources.gpuMemory) || "
            "(has(self.model) && has(self.model.device) && self.model.device != 'cpu')",
            "fieldPath": ".resources",
            "message": GPU_MEMORY_RULE,
        },
        {
            "rule": "!has(self.model) || !has(self.resources) || !has(self.resources.gpu) || self.resources.gpu <= 1 || "
            "(has(self.model.instances) && self.model.instances >= self.resources.gpu)",
            "fieldPath": ".resources",
            "message": GPU_INSTANCES_RULE,
        },
        {
            "rule": "!has(self.externalAutoscaler) || !self.externalAutoscaler || !has(self.autoscaling)",
            "fieldPath": ".autoscaling",
            "message": TWO_AUTOSCALERS_RULE,
        },
    ],
    "steps.items.autoscaling": [_AUTOSCALING_BOUNDS],
    "gateway.autoscaling": [_AUTOSCALING_BOUNDS],
    "steps.items.model": [
        {"rule": "has(self.path) != has(self.uri)", "message": MODEL_SOURCE_RULE},
        {"rule": "!has(self.build) || !has(self.uri)", "fieldPath": ".build", "message": BUILD_RULE},
    ],
    "steps.items.name": [
        {
            "rule": f"self != {_cel_string(GATEWAY_STEP_NAME)}",
            "message": f"{GATEWAY_STEP_NAME!r} is reserved for the pipeline's gateway",
        }
    ],
    "steps.items.op": [
        {
            "rule": f"self in [{', '.join(map(_cel_string, BUILTIN_OP_NAMES))}] || self.matches({_cel_string(IMPORT_REF)})",
            "messageExpression": _cel_string(f"{OP_RULE}, got '") + " + self + " + _cel_string("'"),
        }
    ],
}


def _pod_rules(where: str) -> dict[str, list[dict[str, str]]]:
    """`pod:` settings may not reuse what the operator renders (PodSettings' validators say the same)."""
    volumes = ", ".join(map(_cel_string, RESERVED_VOLUMES))
    paths = ", ".join(_cel_string(p + end) for p in RESERVED_MOUNT_PATHS for end in ("", "/"))
    below = " || ".join(f"m.mountPath.startsWith({_cel_string(p + '/')})" for p in (MODEL_CACHE_DIR, PVC_ROOT))
    env = ", ".join(map(_cel_string, RESERVED_ENV))
    return {
        f"{where}.pod.volumes": [
            {
                "rule": f"self.all(v, !(v.name in [{volumes}]))",
                "message": f"volume names {', '.join(RESERVED_VOLUMES)} are the operator's: rename yours",
            }
        ],
        f"{where}.pod.volumeMounts": [
            {
                "rule": f"self.all(m, !(m.mountPath in [{paths}]) && !({below}))",
                "message": f"mount paths {', '.join(RESERVED_MOUNT_PATHS)} and below {MODEL_CACHE_DIR} and {PVC_ROOT} "
                "are the operator's: mount yours elsewhere",
            }
        ],
        f"{where}.pod.env": [
            {
                "rule": f"self.all(e, !e.name.startsWith('CONVEYOR_') && !(e.name in [{env}]))",
                "message": f"CONVEYOR_* and {', '.join(RESERVED_ENV)} are set by the operator: name yours otherwise",
            }
        ],
    }


_SPEC_RULES.update(_pod_rules("steps.items"))
_SPEC_RULES.update(_pod_rules("gateway"))

_ROOT_RULES = [
    {
        "rule": f"self.metadata.name.matches({_cel_string(DNS1035_LABEL)}) && self.metadata.name.size() <= {MAX_NAME}",
        "message": f"metadata.name {DNS1035_RULE}, at most {MAX_NAME} characters",
    },
    {
        "rule": f"self.spec.steps.all(s, self.metadata.name.size() + 1 + s.name.size() <= {MAX_SERVICE_NAME})",
        "message": f"`<metadata.name>-<step name>` names a Service and must be at most {MAX_SERVICE_NAME} characters: "
        "shorten the step or the pipeline name",
    },
]


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """A copy of `node` with every `$ref` replaced by its definition (recursively)."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        merged = {**copy.deepcopy(defs[name]), **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return {key: _resolve(value, defs) for key, value in node.items()}


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """One schema node made structural (its children too)."""
    variants = node.get("anyOf")
    if variants is not None:
        non_null = [v for v in variants if v.get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"cannot express anyOf {variants!r} structurally; simplify the model")
        # `X | None = None` becomes "X, may be absent": no nullable, no default.
        node = {**{k: v for k, v in node.items() if k not in {"anyOf", "default"}}, **non_null[0]}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _property(sub, name in node.get("required", [])) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value)
        else:
            out[key] = value
    if "default" in node and node["default"] is not None:
        out["default"] = node["default"]
    extra = node.get("additionalProperties")
    if extra is True or (isinstance(extra, dict) and not extra):
        out["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(extra, dict) and "properties" not in node:
        out["additionalProperties"] = _structural(extra)
    if node.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _property(node: dict[str, Any], required: bool) -> dict[str, Any]:
    out = _structural(node)
    # A nested model with a default_factory: `default: {}` lets the API server fill in its fields' defaults.
    if not required and "default" not in node and out.get("type") == "object" and "properties" in out:
        out["default"] = {}
    return out


def structural_schema(model: type[Any]) -> dict[str, Any]:
    """A pydantic model's JSON schema as a structural OpenAPI v3 schema."""
    raw = model.model_json_schema()
    defs = raw.get("$defs", {})
    resolved = _resolve({k: v for k, v in raw.items() if k != "$defs"}, defs)
    schema = _structural(resolved)
    schema.setdefault("type", "object")
    ordered: dict[str, Any] = _ordered(schema)
    return ordered


_KEY_ORDER = ("type", "description", "format")


def _ordered(node: Any) -> Any:
    """Schema keys in a readable order (type and description first), recursively."""
    if isinstance(node, list):
        return [_ordered(item) for item in node]
    if not isinstance(node, dict):
        return node
    first = [k for k in _KEY_ORDER if k in node]
    return {k: _ordered(node[k]) for k in [*first, *(k for k in node if k not in _KEY_ORDER)]}


def _without_defaults(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_defaults(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {k: _without_defaults(v) for k, v in node.items() if k != "default"}


def _add_rules(schema: dict[str, Any], rules: dict[str, list[dict[str, str]]]) -> dict[str, Any]:
    for path, node_rules in rules.items():
        node = schema
        for part in path.split("."):
            node = node[part] if part == "items" else node["properties"][part]
        node["x-kubernetes-validations"] = node_rules
    return schema


def spec_schema() -> dict[str, Any]:
    """`spec`'s schema: the PipelineSpec model plus CEL rules."""
    schema = _add_rules(structural_schema(PipelineSpec), _SPEC_RULES)
    steps = schema["properties"]["steps"]
    if "maxItems" not in steps:  # CEL cost estimation needs a bound on the list the rules iterate
        raise ValueError("PipelineSpec.steps needs max_length for the CRD's CEL rules")
    return schema


def status_schema() -> dict[str, Any]:
    """`status`'s schema, from the PipelineStatus model; conditions are a map list keyed by type."""
    # The operator writes every field of status; defaults there would only hide a missing one.
    schema: dict[str, Any] = _without_defaults(structural_schema(PipelineStatus))
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    conditions["items"]["properties"]["lastTransitionTime"]["format"] = "date-time"
    schema["properties"]["observedGeneration"]["format"] = "int64"
    ordered: dict[str, Any] = _ordered(schema)
    return ordered


def build_crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
    spec = spec_schema()
    root: dict[str, Any] = {
        "type": "object",
        "description": f"{KIND}: a DAG of inference steps, each a Deployment with its own replicas and batching, "
        "behind one gateway.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status_schema(),
        },
        "x-kubernetes-validations": _ROOT_RULES,
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "conveyor", "app.kubernetes.io/part-of": "conveyor"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["conveyor"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                        {"name": "Steps", "type": "integer", "jsonPath": ".status.stepCount"},
                        {"name": "Replicas", "type": "string", "jsonPath": ".status.replicas"},
                        # Live figures (status.live, from the pods' metrics): read at a glance which step to scale.
                        {"name": "Throughput", "type": "string", "jsonPath": ".status.live.throughput"},
                        {"name": "P99", "type": "string", "jsonPath": ".status.live.p99"},
                        {"name": "Bottleneck", "type": "string", "jsonPath": ".status.live.bottleneck"},
                        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                        {
                            "name": "Reason",
                            "type": "string",
                            "priority": 1,
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
                        },
                        {
                            "name": "Saturated",
                            "type": "string",
                            "priority": 1,
                            "jsonPath": '.status.conditions[?(@.type=="Saturated")].message',
                        },
                    ],
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the YAML committed in crds/ (and charts/conveyor/files/, which the chart's templates/crd.yaml reads)."""
    header = "# Generated by `conveyor crd` from conveyor_runtime.spec; do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)
