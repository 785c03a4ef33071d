"""Issue 13 items 6 and 7 on real pods: a step pod deleted under load (another replica serves: no request fails),
the gateway pod killed (its clients see UNAVAILABLE while it is gone, and only then), the operator killed in the
middle of a reconcile (it converges, with no duplicate children)."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.e2e.fixtures_pods import conveyor, conveyor_image, helm  # noqa: F401 - fixtures
from tests.e2e.served import ranked, serving, snapshot, step_pods  # noqa: F401 - fixtures
from tests.support.pods import Pipeline, Release, apply_pipeline, fresh_namespace, identity_manifest, kubectl_json, wait_for

SETTLE_S = 5.0
WAIT_S = 120.0


def _delete_pod(pipeline: Pipeline, name: str, *, kill: bool = False) -> None:
    """`kubectl delete pod` (graceful: SIGTERM, the pre-stop delay, the drain) or, with `kill`, at once (SIGKILL)."""
    force = ["--grace-period=0", "--force"] if kill else []
    pipeline.kubectl("delete", "pod", name, "--wait=false", *force)


def test_deleting_a_step_pod_under_load_fails_no_request(ranked: Pipeline) -> None:
    pods = step_pods(ranked, "rank")
    assert len(pods) == 2, [p.name for p in pods]
    load = serving(ranked)
    try:
        start = load.now()
        _delete_pod(ranked, pods[0].name)
        wait_for(lambda: pods[0].name not in {p.name for p in ranked.pods()} or None, WAIT_S, f"{pods[0].name} gone")
        ranked.wait_ready(timeout=WAIT_S)
        wait_for(lambda: len([p for p in step_pods(ranked, "rank") if p.ready]) == 2 or None, WAIT_S, "2 ready rank pods")
        time.sleep(SETTLE_S)
        end = load.now()
    finally:
        load.stop()
    print(f"step pod deleted: {load.summary(start, end)}")
    assert not load.failures(start, end), load.summary(start, end)


def _gateway_endpoint_ready(pipeline: Pipeline) -> bool:
    slices = kubectl_json(pipeline.cluster, "get", "endpointslices", "-n", pipeline.namespace,
                          "-l", f"kubernetes.io/service-name={pipeline.name}-gateway")["items"]
    return any((e.get("conditions") or {}).get("ready") for s in slices for e in s.get("endpoints") or [])


def _gateway_service_connects(pipeline: Pipeline) -> bool:
    """A TCP connection to the gateway Service's address succeeds: kube-proxy routes it to a live pod again (a
    ready endpoint in the EndpointSlice comes first; kube-proxy's rules follow within its sync period)."""
    host, port = pipeline.grpc_address().rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
    except OSError:
        return False
    return True


def test_killing_the_gateway_pod_shows_clients_unavailable_only_while_it_is_gone(ranked: Pipeline) -> None:
    (gateway,) = [p for p in snapshot(ranked).values() if p.component == "gateway"]
    load = serving(ranked)
    try:
        killed = load.now()
        _delete_pod(ranked, gateway.name, kill=True)
        wait_for(lambda: not _gateway_endpoint_ready(ranked) or None, WAIT_S, "the gateway Service to have no ready endpoint")
        wait_for(lambda: _gateway_endpoint_ready(ranked) or None, WAIT_S, "a new gateway pod behind the Service")
        wait_for(lambda: _gateway_service_connects(ranked) or None, WAIT_S, "the gateway Service to take connections again",
                 interval=0.05)
        back = load.now()
        time.sleep(SETTLE_S)
        end = load.now()
    finally:
        load.stop()
    failures = load.failures(killed, end)
    print(f"gateway killed: {load.summary(killed, end)}; the Service had no ready gateway for {back - killed:.1f}s")
    assert {f.code for f in failures} <= {"UNAVAILABLE"}, load.summary(killed, end)
    # the client reconnects at most `reconnect_backoff_s` (1 s) after the Service takes connections again
    late = [f for f in failures if f.at > back + 1.5]
    assert not late, f"failures after the new gateway was ready: {load.summary(back + 1.5, end)}"


def _children(pipeline: Pipeline) -> Counter[str]:
    """Objects labelled as the pipeline's, by kind/owner: ReplicaSets per Deployment, pods per ReplicaSet, etc."""
    kinds = "deployments,replicasets,services,configmaps"
    items: list[dict[str, Any]] = kubectl_json(pipeline.cluster, "get", kinds, "-n", pipeline.namespace,
                                               "-l", f"app.kubernetes.io/instance={pipeline.name}")["items"]
    return Counter(f"{i['kind']}/{i['metadata']['name'].rsplit('-', 1)[0] if i['kind'] == 'ReplicaSet' else i['metadata']['name']}"
                   for i in items if not i["metadata"].get("deletionTimestamp"))


def _kill_operator_process(pod_uid: str) -> int:
    """SIGKILL the operator's process from the host (found by its pod's cgroup): it dies at once, mid-call."""
    killed = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            in_pod = f"pod{pod_uid}" in (proc / "cgroup").read_text()
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if in_pod and b"conveyor" in command and b"operator" in command:
            os.kill(int(proc.name), signal.SIGKILL)
            killed += 1
    return killed


def test_operator_killed_in_the_middle_of_a_reconcile_converges_with_no_duplicate_children(conveyor: Release) -> None:
    steps = tuple(f"s{i}" for i in range(8))
    namespace = fresh_namespace(conveyor.cluster, "e2e-killop")
    try:
        operator = conveyor.operator_pod()
        pipeline = apply_pipeline(conveyor.cluster, identity_manifest("wide", steps), namespace)

        def some_children() -> bool | None:
            made = len(kubectl_json(conveyor.cluster, "get", "deployments,services", "-n", namespace)["items"])
            return True if 0 < made < 2 * len(steps) + 2 else None

        wait_for(some_children, 60, "the operator to be half-way through creating the children", interval=0.02)
        assert _kill_operator_process(operator.uid) == 1
        at_kill = len(kubectl_json(conveyor.cluster, "get", "deployments,services", "-n", namespace)["items"])
        assert at_kill < 2 * len(steps) + 2, "the operator had finished before it was killed"
        wait_for(lambda: ((pod := conveyor.operator_pod()).restarts > operator.restarts and pod.ready) or None,
                 WAIT_S, "the operator restarted and Ready")
        pipeline.wait_ready(timeout=WAIT_S * 2)
        children = _children(pipeline)
        expected = Counter({"ConfigMap/wide-graph": 1, "Service/wide-gateway": 1, "Deployment/wide-gateway": 1,
                            "ReplicaSet/wide-gateway": 1})
        for step in steps:
            expected.update({f"Service/wide-{step}": 1, f"Deployment/wide-{step}": 1, f"ReplicaSet/wide-{step}": 1})
        assert children == expected
        assert len(pipeline.pods(component="step")) == len(steps)
    finally:
        conveyor.cluster.kubectl("delete", "namespace", namespace, "--wait=false")
