"""The pipeline spec: its typed model (the CRD's schema), graph rules and plan, names, manifest and env codecs.

Everything above this layer (operator, step, gateway, local runner) reads pipelines through these names only.
"""

from .env import BATCHING_ENV, STEP_SPEC_ENV, step_from_env, step_to_env
from .graph import ExecutionPlan, StepNode, graph_errors, output_step, route_inputs, step_inputs, topological_order
from .manifest import load_manifest, parse_manifest, validation_field_errors
from .model import (
    API_GROUP,
    API_VERSION,
    KIND,
    BatchingSpec,
    GatewaySpec,
    Metadata,
    ModelSpec,
    PipelineManifest,
    PipelineSpec,
    ResourcesSpec,
    StepSpec,
)
from .names import (
    GATEWAY_STEP_NAME,
    METRICS_PORT,
    STEP_GRPC_PORT,
    gateway_resource_name,
    graph_configmap_name,
    step_resource_name,
)

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "BATCHING_ENV",
    "GATEWAY_STEP_NAME",
    "KIND",
    "METRICS_PORT",
    "STEP_GRPC_PORT",
    "STEP_SPEC_ENV",
    "BatchingSpec",
    "ExecutionPlan",
    "GatewaySpec",
    "Metadata",
    "ModelSpec",
    "PipelineManifest",
    "PipelineSpec",
    "ResourcesSpec",
    "StepNode",
    "StepSpec",
    "gateway_resource_name",
    "graph_configmap_name",
    "graph_errors",
    "load_manifest",
    "output_step",
    "parse_manifest",
    "route_inputs",
    "step_from_env",
    "step_inputs",
    "step_resource_name",
    "step_to_env",
    "topological_order",
    "validation_field_errors",
]
