"""Conveyor's Kubernetes operator: the InferencePipeline CRD, the children it renders, their status (kopf).

Layout: `crd` (the CRD, generated from `conveyor_runtime.spec`), `labels` and `render` (children as plain
manifests), `status` (conditions and per-step figures), `reconciler` (level-based apply/prune), `cluster` (the
API client), `controller` (one reconcile from a fresh read, status written over that read), `workqueue` (one
reconcile at a time per pipeline), `handlers` (kopf wiring; import `conveyor_operator.handlers.build_registry`
to embed the operator), `config` and `command` (`conveyor operator`, `conveyor crd`). This face stays free of kopf and the
Kubernetes client so that every `conveyor` command starts fast.
"""

from .config import OperatorConfig
from .crd import build_crd, crd_yaml
from .render import Owner, render_children
from .status import PipelineStatus, compute_status

__all__ = [
    "OperatorConfig",
    "Owner",
    "PipelineStatus",
    "build_crd",
    "compute_status",
    "crd_yaml",
    "render_children",
]
