"""Conveyor on real pods: helm, the image, the chart installed in a cluster of scripts/cluster.sh, and pipelines there.

``Release`` is charts/conveyor installed with helm (the operator as a pod); ``Pipeline`` is one InferencePipeline
applied with kubectl, with what the e2e tests read from it: its status, pods (UIDs, restart counts), gateway Service
address (the host routes to the cluster's Service and pod subnets, so ClusterIPs and pod IPs are reached directly)
and per-pod metrics. The expensive set-up (helm binary, image, install) is memoized per cluster in this module, so
fixtures that call it from several test modules share one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.support.cluster import Cluster, ClusterError

__all__ = [
    "CHART",
    "EXAMPLES",
    "IMAGE",
    "OPERATOR_NAMESPACE",
    "RELEASE",
    "REPO_ROOT",
    "Pipeline",
    "Pod",
    "Release",
    "apply_pipeline",
    "ensure_image",
    "ensure_release",
    "fresh_namespace",
    "helm_binary",
    "identity_manifest",
    "kubectl_json",
    "wait_for",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "conveyor"
EXAMPLES = REPO_ROOT / "examples"
IMAGE_SCRIPT = REPO_ROOT / "scripts" / "build-image.sh"
HELM_SCRIPT = REPO_ROOT / "scripts" / "install-helm.sh"
#: The image the tier builds from the checkout's Dockerfile and loads into the node (never pulled).
IMAGE = "conveyor:dev"
RELEASE = "conveyor"
OPERATOR_NAMESPACE = "conveyor-system"
#: Building helm cold takes minutes; the image cold builds a Debian base and installs the wheels.
HELM_BUILD_TIMEOUT = 1800.0
IMAGE_BUILD_TIMEOUT = 2400.0
#: A step may build its model at first start (the startup probe allows 10 minutes).
READY_TIMEOUT = 600.0
GRPC_PORT = 8001
HTTP_PORT = 8000
METRICS_PORT = 9090

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 1.0) -> T:
    """Poll `probe` until it returns something other than None/False; raise naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
            if value is not None and value is not False:
                return value
            last_error = None
        except (ClusterError, OSError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f": {last_error}" if last_error else ""))
        time.sleep(interval)


def kubectl_json(cluster: Cluster, *args: str, timeout: float = 60.0) -> Any:
    """`kubectl ARGS -o json`, parsed."""
    return json.loads(cluster.kubectl(*args, "-o", "json", timeout=timeout))


def _run_logged(argv: Sequence[str], timeout: float, what: str, env: dict[str, str] | None = None) -> str:
    """Run a build script; its stderr (progress) is kept for the error message only. Returns stdout."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if done.returncode != 0:
        raise ClusterError(f"{what} exited {done.returncode}:\n{done.stderr[-3000:]}{done.stdout[-1000:]}")
    return done.stdout


# --- memoized set-up -------------------------------------------------------------------------------------------
_helm: Path | None = None
_images: dict[str, str] = {}
_releases: dict[str, Release] = {}


def helm_binary() -> Path:
    """helm from scripts/install-helm.sh (built once from the Go module proxy into ~/.cache/conveyor/bin)."""
    global _helm
    if _helm is None:
        out = _run_logged(["bash", str(HELM_SCRIPT)], HELM_BUILD_TIMEOUT, "scripts/install-helm.sh")
        _helm = Path(out.strip().splitlines()[-1])
    return _helm


def ensure_image(cluster: Cluster) -> str:
    """The checkout's image built from the Dockerfile and loaded into `cluster`'s containerd as conveyor:dev."""
    name = cluster.config.name
    if name not in _images:
        if not IMAGE_SCRIPT.exists():
            raise ClusterError(f"{IMAGE_SCRIPT.relative_to(REPO_ROOT)} is missing: it builds and loads {IMAGE}")
        env = {**os.environ, **cluster.config.env()}
        _run_logged(["bash", str(IMAGE_SCRIPT)], IMAGE_BUILD_TIMEOUT, "scripts/build-image.sh", env=env)
        _images[name] = IMAGE
    return _images[name]


def ensure_release(cluster: Cluster, *, timeout: float = 300.0) -> Release:
    """charts/conveyor installed (or upgraded back to the checkout's chart) with conveyor:dev; the operator Ready."""
    name = cluster.config.name
    if name not in _releases:
        release = Release(cluster, helm_binary())
        release.install(timeout=timeout)
        _releases[name] = release
    return _releases[name]


# --- pods --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pod:
    """What the tests compare of one pod: identity (uid), health (ready, restarts) and address."""

    name: str
    uid: str
    ip: str
    phase: str
    ready: bool
    restarts: int
    component: str
    step: str | None
    deleting: bool
    labels: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> Pod:
        meta, status = obj["metadata"], obj.get("status", {})
        labels = meta.get("labels", {})
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        return cls(
            name=meta["name"],
            uid=meta["uid"],
            ip=status.get("podIP", ""),
            phase=status.get("phase", ""),
            ready=conditions.get("Ready") == "True",
            restarts=sum(c.get("restartCount", 0) for c in status.get("containerStatuses", [])),
            component=labels.get("app.kubernetes.io/component", ""),
            step=labels.get("conveyor.dev/step"),
            deleting="deletionTimestamp" in meta,
            labels=labels,
        )


def list_pods(cluster: Cluster, namespace: str, selector: str) -> list[Pod]:
    items = kubectl_json(cluster, "get", "pods", "-n", namespace, "-l", selector)["items"]
    return sorted((Pod.from_object(item) for item in items), key=lambda pod: pod.name)


# --- the chart ---------------------------------------------------------------------------------------------------
@dataclass
class Release:
    """charts/conveyor installed with helm as `name` in `namespace` of `cluster`."""

    cluster: Cluster
    helm_path: Path
    name: str = RELEASE
    namespace: str = OPERATOR_NAMESPACE

    def helm(self, *args: str, timeout: float = 600.0) -> str:
        """Run helm against the cluster (its caches and config kept in the cluster's state directory)."""
        kubeconfig = self.cluster.kubeconfig
        if kubeconfig is None:
            raise ClusterError("cluster is not up: call up() first")
        home = kubeconfig.parent / "helm"
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        done = subprocess.run([str(self.helm_path), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)
        if done.returncode != 0:
            raise ClusterError(f"helm {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def values(self) -> list[str]:
        """`--set` arguments: the local image, never pulled."""
        return ["--set", "image.repository=conveyor", "--set", "image.tag=dev", "--set", "image.pullPolicy=Never"]

    def install(self, chart: Path = CHART, *extra: str, timeout: float = 300.0) -> str:
        """`helm upgrade --install` (idempotent), waiting until the operator pod is Ready."""
        return self.upgrade(chart, "--install", "--create-namespace", *extra, timeout=timeout)

    def upgrade(self, chart: Path = CHART, *extra: str, timeout: float = 300.0) -> str:
        """`helm upgrade` to `chart` with the local image, waiting until the operator pod is Ready."""
        args = ["upgrade", self.name, str(chart), "--namespace", self.namespace, *self.values(), *extra]
        out = self.helm(*args, "--wait", "--timeout", f"{int(timeout)}s", timeout=timeout + 60)
        self.wait_operator_ready(timeout)
        return out

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=operator"

    @property
    def deployment(self) -> dict[str, Any]:
        items: list[dict[str, Any]] = kubectl_json(self.cluster, "get", "deployments", "-n", self.namespace, "-l", self.selector)[
            "items"
        ]
        if len(items) != 1:
            raise ClusterError(f"expected one operator Deployment in {self.namespace}, found {len(items)}")
        return items[0]

    @property
    def service_account(self) -> str:
        return str(self.deployment["spec"]["template"]["spec"]["serviceAccountName"])

    def operator_pods(self) -> list[Pod]:
        return list_pods(self.cluster, self.namespace, self.selector)

    def operator_pod(self) -> Pod:
        """The one running operator pod (not one being deleted)."""
        pods = [pod for pod in self.operator_pods() if not pod.deleting]
        if len(pods) != 1:
            raise ClusterError(f"expected one operator pod, found {[p.name for p in pods]}")
        return pods[0]

    def wait_operator_ready(self, timeout: float = 300.0) -> Pod:
        def ready() -> Pod | None:
            pods = [pod for pod in self.operator_pods() if not pod.deleting]
            return pods[0] if len(pods) == 1 and pods[0].ready and len(self.operator_pods()) == 1 else None

        return wait_for(ready, timeout, f"the operator pod in {self.namespace} to be Ready (alone)")

    def scale_operator(self, replicas: int, timeout: float = 120.0) -> None:
        """Scale the operator Deployment; waits until its pod is gone (0) or Ready (1)."""
        name = self.deployment["metadata"]["name"]
        self.cluster.kubectl("scale", "deployment", name, "-n", self.namespace, f"--replicas={replicas}")
        if replicas == 0:
            wait_for(lambda: not self.operator_pods(), timeout, "the operator pod to be gone")
        else:
            self.wait_operator_ready(timeout)

    def operator_logs(self, pod: Pod | None = None, previous: bool = False) -> str:
        target = (pod or self.operator_pod()).name
        args = ["logs", "-n", self.namespace, target, "--tail=-1"]
        return self.cluster.kubectl(*args, *(["--previous"] if previous else []))

    def forbidden_log_lines(self) -> list[str]:
        """Lines of the operator's log that carry an HTTP 403 ("(403)", "403 Forbidden", "status=403", but not a
        timestamp's ",403" milliseconds) or "Forbidden"."""
        return [
            line for line in self.operator_logs().splitlines() if "Forbidden" in line or re.search(r"(?<![\d,.:])403(?!\d)", line)
        ]


# --- pipelines ---------------------------------------------------------------------------------------------------
def fresh_namespace(cluster: Cluster, prefix: str) -> str:
    """A new namespace `PREFIX-xxxxxx` (created now)."""
    name = f"{prefix}-{secrets.token_hex(3)}"[:63]
    cluster.kubectl("create", "namespace", name)
    return name


def identity_manifest(name: str, steps: Sequence[str] = ("first", "second"), **spec: Any) -> dict[str, Any]:
    """A pipeline of `identity` op steps: no model to build, so its pods are Ready in seconds."""
    return {
        "apiVersion": "conveyor.dev/v1alpha1",
        "kind": "InferencePipeline",
        "metadata": {"name": name},
        "spec": {"steps": [{"name": step, "op": "identity"} for step in steps], **spec},
    }


def _manifest_dict(manifest: Path | str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(manifest, Path):
        manifest = manifest.read_text()
    if isinstance(manifest, str):
        loaded = yaml.safe_load(manifest)
        if not isinstance(loaded, dict):
            raise ValueError("the manifest is not a YAML mapping")
        return loaded
    return manifest


def apply_pipeline(cluster: Cluster, manifest: Path | str | dict[str, Any], namespace: str, name: str | None = None) -> Pipeline:
    """`kubectl apply` an InferencePipeline manifest into `namespace` (renamed to `name` if given)."""
    body = json.loads(json.dumps(_manifest_dict(manifest)))
    if name is not None:
        body["metadata"]["name"] = name
    body["metadata"]["namespace"] = namespace
    cluster.apply(yaml.safe_dump(body))
    return Pipeline(cluster, body["metadata"]["name"], namespace)


def _metric_labels(text: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', text))


@dataclass
class Pipeline:
    """One InferencePipeline in the cluster, as kubectl sees it."""

    cluster: Cluster
    name: str
    namespace: str

    def kubectl(self, *args: str, timeout: float = 120.0) -> str:
        return self.cluster.kubectl(*args, "-n", self.namespace, timeout=timeout)

    def get(self) -> dict[str, Any]:
        result: dict[str, Any] = kubectl_json(self.cluster, "get", "inferencepipeline", self.name, "-n", self.namespace)
        return result

    def conditions(self, obj: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        status = (obj or self.get()).get("status") or {}
        return {c["type"]: c for c in status.get("conditions", [])}

    def wait_condition(self, kind: str, status: str, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """Wait until condition `kind` has `status` for the current generation; returns the pipeline object."""

        def reached() -> dict[str, Any] | None:
            obj = self.get()
            condition = self.conditions(obj).get(kind)
            current = (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]
            return obj if current and condition is not None and condition["status"] == status else None

        try:
            return wait_for(reached, timeout, f"{self.namespace}/{self.name} {kind}={status}", interval=2.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.describe()}") from None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        return self.wait_condition("Ready", "True", timeout)

    def describe(self) -> str:
        """The pipeline's status and its pods, for assertion messages."""
        try:
            status = json.dumps(self.get().get("status"), indent=1)[-3000:]
            pods = self.kubectl("get", "pods", "-o", "wide")
        except ClusterError as exc:
            return f"(could not describe: {exc})"
        return f"status: {status}\npods:\n{pods}"

    @property
    def selector(self) -> str:
        return f"conveyor.dev/pipeline={self.name}"

    def pods(self, component: str | None = None, step: str | None = None) -> list[Pod]:
        """Pods of the pipeline (component "step" or "gateway"; `step` a step's name)."""
        selector = self.selector
        if component is not None:
            selector += f",app.kubernetes.io/component={component}"
        if step is not None:
            selector += f",conveyor.dev/step={step}"
        return list_pods(self.cluster, self.namespace, selector)

    def deployments(self) -> dict[str, dict[str, Any]]:
        items = kubectl_json(self.cluster, "get", "deployments", "-n", self.namespace, "-l", self.selector)["items"]
        return {item["metadata"]["name"]: item for item in items}

    def children(self) -> set[str]:
        """`Kind/name` of every object labelled as this pipeline's child (with pods, ReplicaSets and EndpointSlices,
        which inherit the labels)."""
        kinds = "deployments,replicasets,pods,services,configmaps,endpointslices"
        items = kubectl_json(self.cluster, "get", kinds, "-n", self.namespace, "-l", f"app.kubernetes.io/instance={self.name}")
        return {f"{item['kind']}/{item['metadata']['name']}" for item in items["items"]}

    def gateway_ip(self) -> str:
        service = kubectl_json(self.cluster, "get", "service", f"{self.name}-gateway", "-n", self.namespace)
        return str(service["spec"]["clusterIP"])

    def grpc_address(self) -> str:
        return f"{self.gateway_ip()}:{GRPC_PORT}"

    def http_url(self) -> str:
        return f"http://{self.gateway_ip()}:{HTTP_PORT}"

    def metrics(self, pod: Pod, timeout: float = 10.0) -> str:
        """The pod's Prometheus metrics (GET http://POD_IP:9090/metrics, straight from the host)."""
        with urllib.request.urlopen(f"http://{pod.ip}:{METRICS_PORT}/metrics", timeout=timeout) as response:
            text: str = response.read().decode()
        return text

    def metric(self, pod: Pod, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0.0 when there is none)."""
        total = 0.0
        for line in self.metrics(pod).splitlines():
            match = re.match(r"^([a-zA-Z_:][\w:]*)(\{.*\})?\s+(\S+)", line)
            if match is None or match.group(1) != name:
                continue
            sample = _metric_labels(match.group(2) or "")
            if all(sample.get(k) == v for k, v in labels.items()):
                total += float(match.group(3))
        return total

    def patch(self, json_patch: list[dict[str, Any]]) -> None:
        self.kubectl("patch", "inferencepipeline", self.name, "--type", "json", "-p", json.dumps(json_patch))

    def patch_merge(self, merge: dict[str, Any]) -> None:
        self.kubectl("patch", "inferencepipeline", self.name, "--type", "merge", "-p", json.dumps(merge))

    def delete(self, wait: bool = True, timeout: float = 120.0) -> None:
        """`kubectl delete ipl NAME` (with --wait: until the pipeline object is gone)."""
        self.kubectl(
            "delete",
            "inferencepipeline",
            self.name,
            f"--wait={str(wait).lower()}",
            f"--timeout={int(timeout)}s",
            timeout=timeout + 30,
        )
