"""The names the operator stamps on its children: labels, the selector of a pipeline's children, its field manager
and the pods' default image. Shared by rendering, the API client and the kopf handlers.
"""

from __future__ import annotations

from conveyor_runtime.spec import API_GROUP

__all__ = [
    "COMPONENT_LABEL",
    "DEFAULT_IMAGE",
    "FIELD_MANAGER",
    "MANAGED_BY",
    "PIPELINE_LABEL",
    "REPLICAS_HANDOVER_MANAGER",
    "STEP_LABEL",
    "child_selector",
    "labels",
    "selector_labels",
]

FIELD_MANAGER = "conveyor-operator"
#: Holds `spec.replicas` of a step Deployment with `externalAutoscaler` between its creation and the autoscaler's
#: first write, so that the operator's own applies can leave the field out without resetting it.
REPLICAS_HANDOVER_MANAGER = "conveyor-operator-replicas"
MANAGED_BY = "conveyor-operator"
PIPELINE_LABEL = f"{API_GROUP}/pipeline"
STEP_LABEL = f"{API_GROUP}/step"
COMPONENT_LABEL = "app.kubernetes.io/component"
#: Used when neither spec.image nor the operator's CONVEYOR_IMAGE names an image.
DEFAULT_IMAGE = "conveyor:0.1.0"


def labels(pipeline: str, component: str, step: str | None = None) -> dict[str, str]:
    """Recommended `app.kubernetes.io/*` labels plus conveyor's own pipeline/step labels."""
    result = {
        "app.kubernetes.io/name": "conveyor",
        "app.kubernetes.io/instance": pipeline,
        COMPONENT_LABEL: component,
        "app.kubernetes.io/part-of": "conveyor",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        PIPELINE_LABEL: pipeline,
    }
    if step is not None:
        result[STEP_LABEL] = step
    return result


def selector_labels(pipeline: str, component: str, step: str | None = None) -> dict[str, str]:
    """The (immutable) Deployment selector: a subset of `labels`."""
    result = {PIPELINE_LABEL: pipeline, COMPONENT_LABEL: component}
    if step is not None:
        result[STEP_LABEL] = step
    return result


def child_selector(pipeline: str) -> str:
    """Label selector for every child of one pipeline."""
    return f"app.kubernetes.io/instance={pipeline},app.kubernetes.io/managed-by={MANAGED_BY}"
