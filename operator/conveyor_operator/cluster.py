"""The operator's one seam to the Kubernetes API: server-side apply, list by label, delete (kubernetes client).

Calls block, so they run in kopf's sync-handler threads, never on the event loop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from .labels import FIELD_MANAGER

__all__ = ["CHILD_KINDS", "ChildKey", "Cluster", "child_key"]

logger = logging.getLogger(__name__)

#: (apiVersion, kind) of everything the operator creates.
CHILD_KINDS: tuple[tuple[str, str], ...] = (("v1", "ConfigMap"), ("v1", "Service"), ("apps/v1", "Deployment"))

ChildKey = tuple[str, str]


def child_key(obj: Mapping[str, Any]) -> ChildKey:
    """(kind, name): how children are matched between the rendered and the observed sets."""
    return str(obj["kind"]), str(obj["metadata"]["name"])


class Cluster:
    """Server-side apply and friends over one API client; thread-safe enough for kopf's handler threads."""

    def __init__(self, api_client: k8s_client.ApiClient, field_manager: str = FIELD_MANAGER) -> None:
        self.api_client = api_client
        self.field_manager = field_manager
        self._dynamic: Any = DynamicClient(api_client)  # type: ignore[no-untyped-call]
        # Resolve the kinds now (discovery), not concurrently from several handler threads later.
        self._resources = {
            (api_version, kind): self._dynamic.resources.get(api_version=api_version, kind=kind)
            for api_version, kind in CHILD_KINDS
        }

    @classmethod
    def connect(cls) -> Cluster:
        """In-cluster credentials when running in a pod, else KUBECONFIG / ~/.kube/config."""
        configuration = k8s_client.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            source = "in-cluster service account"
        except k8s_config.ConfigException:
            # $KUBECONFIG as of now (the client library reads it once, at import).
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
            )
            source = "kubeconfig"
        logger.info("Kubernetes API at %s (%s)", configuration.host, source)
        return cls(k8s_client.ApiClient(configuration))

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    def _resource(self, api_version: str, kind: str) -> Any:
        return self._resources.get((api_version, kind)) or self._dynamic.resources.get(api_version=api_version, kind=kind)

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply (force: the operator owns these fields); returns the object as stored."""
        resource = self._resource(str(obj["apiVersion"]), str(obj["kind"]))
        result = self._dynamic.server_side_apply(
            resource,
            body=dict(obj),
            namespace=obj["metadata"].get("namespace"),
            field_manager=self.field_manager,
            force_conflicts=True,
        )
        stored: dict[str, Any] = result.to_dict()
        return stored

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """Objects of one kind in a namespace that match a label selector."""
        result = self._dynamic.get(self._resource(api_version, kind), namespace=namespace, label_selector=label_selector)
        items: list[dict[str, Any]] = [dict(item) for item in result.to_dict().get("items", [])]
        for item in items:  # list items lack these two; child_key and apply-comparisons want them
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One object, or None when it does not exist."""
        try:
            result = self._dynamic.get(self._resource(api_version, kind), name=name, namespace=namespace)
        except NotFoundError:
            return None
        found: dict[str, Any] = result.to_dict()
        return found

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the status subresource of one object (None values delete fields)."""
        resource = self._resource(api_version, kind)
        self._dynamic.patch(
            resource.status,
            body={"status": dict(status)},
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
        )

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete one object (dependents in the background); False when it was already gone."""
        try:
            self._dynamic.delete(
                self._resource(api_version, kind),
                name=name,
                namespace=namespace,
                propagation_policy="Background",
            )
        except NotFoundError:
            return False
        return True
