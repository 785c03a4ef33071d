"""The cluster of scripts/cluster.sh runs real pods: a Ready node, probes, Services and cluster DNS."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster, local_images
from tests.support.pods import wait_for

NAMESPACE = "e2e-cluster"
WAIT = "120s"


def _web_pod(name: str, image: str, *, ready_at_start: bool) -> str:
    """busybox httpd on :8080 serving /www; its readiness probe asks for /www/ready."""
    ready = " && touch /www/ready" if ready_at_start else ""
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NAMESPACE}, labels: {{app: {name}}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {image}
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /www && echo hello-from-{name} >/www/index.html{ready} && exec httpd -f -p 8080 -h /www"]
    readinessProbe:
      httpGet: {{path: /ready, port: 8080}}
      periodSeconds: 1
      failureThreshold: 1
"""


def _manifest(image: str) -> str:
    return f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
{_web_pod("web", image, ready_at_start=True)}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NAMESPACE}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NAMESPACE}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: {image}
    imagePullPolicy: Never
    command: ["sleep", "3600"]
"""


@pytest.fixture(scope="module")
def pods(cluster: Cluster) -> Iterator[Cluster]:
    """A ready web pod behind the Service `web`, and a client pod, on the shared cluster."""
    cluster.apply(_manifest(local_images()["busybox"]))
    try:
        for pod in ("web", "client"):
            cluster.kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", f"pod/{pod}", f"--timeout={WAIT}")
        yield cluster
    finally:
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def _exec(cluster: Cluster, pod: str, *command: str) -> str:
    return cluster.kubectl("-n", NAMESPACE, "exec", pod, "--", *command)


def _ready(cluster: Cluster, pod: str) -> str:
    return cluster.kubectl("-n", NAMESPACE, "get", "pod", pod, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}")


def test_node_is_ready(cluster: Cluster) -> None:
    node = json.loads(cluster.kubectl("get", "node", cluster.config.name, "-o", "json"))
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True", conditions


def test_readiness_probe_decides_when_the_local_image_pod_is_ready(pods: Cluster) -> None:
    pods.apply(_web_pod("probed", local_images()["busybox"], ready_at_start=False))
    try:
        pods.kubectl(
            "-n", NAMESPACE, "wait", "--for=jsonpath={.status.phase}=Running", "pod/probed", f"--timeout={WAIT}"
        )  # fmt: skip
        # The kubelet's own probe fails (404) while /www/ready is missing ... (`kubectl wait` on events fails at
        # once when none matches yet, so poll for the kubelet's Unhealthy event)
        def unhealthy() -> bool:
            listed = pods.kubectl(
                "-n", NAMESPACE, "get", "event", "-o", "name",
                "--field-selector=involvedObject.name=probed,reason=Unhealthy",
            )  # fmt: skip
            return bool(listed.strip())

        wait_for(lambda: unhealthy() or None, 120, "the kubelet's Unhealthy event for pod/probed")
        assert _ready(pods, "probed") == "False"
        # ... and passes once it exists.
        _exec(pods, "probed", "touch", "/www/ready")
        pods.kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", "pod/probed", f"--timeout={WAIT}")
        assert _ready(pods, "probed") == "True"
    finally:
        pods.kubectl("-n", NAMESPACE, "delete", "pod", "probed", "--wait=false", check=False)


def test_service_name_resolves_and_answers_from_another_pod(pods: Cluster) -> None:
    cluster_ip = pods.kubectl("-n", NAMESPACE, "get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")

    answer = _exec(pods, "client", "nslookup", f"web.{NAMESPACE}.svc.cluster.local")
    assert f"Address: {cluster_ip}" in answer, answer
    # By the short name, through the pod's search path, CoreDNS and kube-proxy's ClusterIP rules.
    # (busybox 1.35's wget crashes on its own -T: `timeout` bounds it instead.)
    body = _exec(pods, "client", "timeout", "20", "wget", "-q", "-O", "-", "http://web/index.html")
    assert body.strip() == "hello-from-web"


def test_pods_have_no_default_route_and_dns_answers_cluster_names_only(pods: Cluster) -> None:
    routes = _exec(pods, "client", "ip", "route")
    assert routes.strip(), "the pod has no routes at all"
    assert "default" not in routes, routes
    # A name outside the cluster is not forwarded anywhere: CoreDNS refuses it.
    outside = _exec(pods, "client", "sh", "-c", "nslookup example.com; echo exit=$?")
    assert "exit=1" in outside and "can't find example.com" in outside, outside


def test_pods_reach_the_api_server_through_the_kubernetes_service(pods: Cluster) -> None:
    # In-cluster clients (the operator's kopf login) use https://kubernetes.default.svc: a TCP connection
    # through CoreDNS and the Service's ClusterIP to the API server on the node.
    connect = _exec(pods, "client", "sh", "-c", "timeout 10 nc -w 5 kubernetes.default.svc 443 </dev/null; echo exit=$?")
    assert "exit=0" in connect, connect
