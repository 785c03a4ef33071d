"""Conveyor's Kubernetes operator: the InferencePipeline CRD, its children and their status (kopf)."""

from __future__ import annotations

__all__: list[str] = []
