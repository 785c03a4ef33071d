"""Names and ports a pipeline's children share: Deployments, Services, the graph ConfigMap and the pods' ports."""

from __future__ import annotations

import re

from ..errors import FieldError
from .model import DNS1035_LABEL, DNS1035_RULE, MAX_NAME, PipelineSpec

__all__ = [
    "GATEWAY_STEP_NAME",
    "MAX_SERVICE_NAME",
    "METRICS_PORT",
    "STEP_GRPC_PORT",
    "gateway_resource_name",
    "graph_configmap_name",
    "name_errors",
    "step_resource_name",
]

#: Ports inside a step pod; the gateway's ports are GatewaySpec.grpcPort / httpPort.
STEP_GRPC_PORT = 9000
METRICS_PORT = 9090
#: Reserved: the gateway's resources are named `<pipeline>-gateway`, so no step may be called this.
GATEWAY_STEP_NAME = "gateway"
#: A Service name is a DNS-1035 label: at most 63 characters.
MAX_SERVICE_NAME = 63


def step_resource_name(pipeline: str, step: str) -> str:
    """Name of a step's Deployment and headless Service (also its DNS name inside the namespace)."""
    return f"{pipeline}-{step}"


def gateway_resource_name(pipeline: str) -> str:
    """Name of the gateway's Deployment and Service."""
    return f"{pipeline}-{GATEWAY_STEP_NAME}"


def graph_configmap_name(pipeline: str) -> str:
    """Name of the ConfigMap that holds the pipeline manifest for the gateway."""
    return f"{pipeline}-graph"


def name_errors(pipeline: str, spec: PipelineSpec) -> list[FieldError]:
    """Names the API server would refuse for the children: the pipeline's own, and each `<pipeline>-<step>`."""
    if not re.fullmatch(DNS1035_LABEL, pipeline) or len(pipeline) > MAX_NAME:
        return [FieldError("metadata.name", f"{DNS1035_RULE}, at most {MAX_NAME} characters, got {pipeline!r}")]
    errors = []
    for index, step in enumerate(spec.steps):
        child = step_resource_name(pipeline, step.name)
        if len(child) > MAX_SERVICE_NAME:
            errors.append(
                FieldError(
                    f"spec.steps[{index}].name",
                    f"the step's Service name {child!r} (<metadata.name>-<step name>) is {len(child)} characters; "
                    f"Kubernetes allows {MAX_SERVICE_NAME}: shorten the step or the pipeline name",
                )
            )
    return errors
