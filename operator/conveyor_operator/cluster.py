"""The operator's one seam to the Kubernetes API: server-side apply, list, get, status, events (kubernetes client).

Calls block, so they run in worker threads, never on the event loop. Every failure leaves here as `ClusterError`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from .labels import FIELD_MANAGER

__all__ = ["CHILD_KINDS", "POD_KIND", "ChildKey", "Cluster", "ClusterError", "child_key"]

logger = logging.getLogger(__name__)

#: (apiVersion, kind) of everything the operator creates.
CHILD_KINDS: tuple[tuple[str, str], ...] = (("v1", "ConfigMap"), ("v1", "Service"), ("apps/v1", "Deployment"))
#: The children's pods (the Deployments' ReplicaSets own them), read for why a step cannot start.
POD_KIND = ("v1", "Pod")
#: Seconds before a call to the API server counts as failed (temporary).
REQUEST_TIMEOUT_S = 30.0
#: Longest Event message; the API server keeps a message short, and a rejected child's message can be long.
EVENT_MESSAGE_LIMIT = 1024

ChildKey = tuple[str, str]


class ClusterError(Exception):
    """An API call failed: `status` is the HTTP status (0 when no answer came), `message` the API server's words."""

    def __init__(self, status: int, message: str, reason: str = "", causes: tuple[str, ...] = ()) -> None:
        super().__init__(f"{message} (HTTP {status})" if status else message)
        self.status = status
        self.message = message
        self.reason = reason
        self.causes = causes

    @property
    def temporary(self) -> bool:
        """Worth retrying as it is: no answer, a server fault, a timeout, throttling or a conflict."""
        return self.status == 0 or self.status >= 500 or self.status in (408, 409, 429)

    @property
    def namespace_terminating(self) -> bool:
        """The namespace is being deleted: nothing can be created there any more."""
        return "NamespaceTerminating" in self.causes

    @classmethod
    def from_api(cls, exc: ApiException) -> ClusterError:
        """From the client's exception: the Status object's message, reason and causes when the body has one."""
        status = int(exc.status or 0)
        body: Any = exc.body
        try:
            document = json.loads(body) if body else {}
        except (TypeError, ValueError):
            document = {}
        if not isinstance(document, dict):
            document = {}
        message = str(document.get("message") or exc.reason or f"HTTP {status}")
        causes = tuple(
            str(cause.get("reason", "")) for cause in (document.get("details") or {}).get("causes") or [] if isinstance(cause, dict)
        )
        return cls(status, message, str(document.get("reason") or ""), causes)


@contextlib.contextmanager
def _mapped(action: str) -> Iterator[None]:
    """Foreign errors become ClusterError here, and only here."""
    try:
        yield
    except ApiException as exc:
        raise ClusterError.from_api(exc) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise ClusterError(0, f"{action}: no answer from the API server: {exc}") from exc


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
        with _mapped("discover the API's kinds"):
            self._resources = {
                (api_version, kind): self._dynamic.resources.get(api_version=api_version, kind=kind)
                for api_version, kind in (*CHILD_KINDS, POD_KIND, ("v1", "Event"))
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
        found = self._resources.get((api_version, kind))
        if found is None:
            with _mapped(f"discover {kind}"):
                found = self._dynamic.resources.get(api_version=api_version, kind=kind)
        return found

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply (force: the operator owns these fields); returns the object as stored."""
        return self.apply_as(obj, self.field_manager)

    def apply_as(self, obj: Mapping[str, Any], field_manager: str) -> dict[str, Any]:
        """`apply` under another field manager's name (see `reconciler.REPLICAS_HANDOVER_MANAGER`)."""
        with _mapped(f"apply {obj['kind']} {obj['metadata']['name']}"):
            result = self._dynamic.server_side_apply(
                self._resource(str(obj["apiVersion"]), str(obj["kind"])),
                body=dict(obj),
                namespace=obj["metadata"].get("namespace"),
                field_manager=field_manager,
                force_conflicts=True,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        stored: dict[str, Any] = result.to_dict()
        return stored

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """Objects of one kind in a namespace that match a label selector."""
        with _mapped(f"list {kind}"):
            result = self._dynamic.get(
                self._resource(api_version, kind),
                namespace=namespace,
                label_selector=label_selector,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        items: list[dict[str, Any]] = [dict(item) for item in result.to_dict().get("items", [])]
        for item in items:  # list items lack these two; child_key and apply-comparisons want them
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One object, or None when it does not exist."""
        try:
            with _mapped(f"get {kind} {name}"):
                result = self._dynamic.get(
                    self._resource(api_version, kind), name=name, namespace=namespace, _request_timeout=REQUEST_TIMEOUT_S
                )
        except ClusterError as exc:
            if exc.status == 404:
                return None
            raise
        found: dict[str, Any] = result.to_dict()
        return found

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any], resource_version: str
    ) -> None:
        """Merge-patch the status subresource of the object as read at `resource_version` (None values delete fields).

        Raises ClusterError 409 if the object changed since: a status computed from an older read never lands.
        """
        with _mapped(f"write the status of {kind} {name}"):
            self._dynamic.patch(
                self._resource(api_version, kind).status,
                body={"metadata": {"resourceVersion": resource_version}, "status": dict(status)},
                name=name,
                namespace=namespace,
                content_type="application/merge-patch+json",
                _request_timeout=REQUEST_TIMEOUT_S,
            )

    def post_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about `obj` (what `kubectl describe` lists under Events)."""
        meta = obj["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta.get("namespace")},
            "involvedObject": {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "name": meta["name"],
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message if len(message) <= EVENT_MESSAGE_LIMIT else message[: EVENT_MESSAGE_LIMIT - 3] + "...",
            "source": {"component": self.field_manager},
            "reportingComponent": self.field_manager,
            "reportingInstance": socket.gethostname(),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with _mapped(f"post a {reason} event"):
            self._dynamic.create(
                self._resource("v1", "Event"), body=event, namespace=meta.get("namespace"), _request_timeout=REQUEST_TIMEOUT_S
            )

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete one object (dependents in the background); False when it was already gone."""
        try:
            with _mapped(f"delete {kind} {name}"):
                self._dynamic.delete(
                    self._resource(api_version, kind),
                    name=name,
                    namespace=namespace,
                    propagation_policy="Background",
                    _request_timeout=REQUEST_TIMEOUT_S,
                )
        except ClusterError as exc:
            if exc.status == 404:
                return False
            raise
        return True
