"""Names and ports a pipeline's children share: Deployments, Services, the graph ConfigMap and the pods' ports."""

from __future__ import annotations

__all__ = [
    "GATEWAY_STEP_NAME",
    "METRICS_PORT",
    "STEP_GRPC_PORT",
    "gateway_resource_name",
    "graph_configmap_name",
    "step_resource_name",
]

#: Ports inside a step pod; the gateway's ports are GatewaySpec.grpcPort / httpPort.
STEP_GRPC_PORT = 9000
METRICS_PORT = 9090
#: Reserved: the gateway's resources are named `<pipeline>-gateway`, so no step may be called this.
GATEWAY_STEP_NAME = "gateway"


def step_resource_name(pipeline: str, step: str) -> str:
    """Name of a step's Deployment and headless Service (also its DNS name inside the namespace)."""
    return f"{pipeline}-{step}"


def gateway_resource_name(pipeline: str) -> str:
    """Name of the gateway's Deployment and Service."""
    return f"{pipeline}-{GATEWAY_STEP_NAME}"


def graph_configmap_name(pipeline: str) -> str:
    """Name of the ConfigMap that holds the pipeline manifest for the gateway."""
    return f"{pipeline}-graph"
