"""The operator reads its pipeline's pods' metrics endpoints and writes the live figures into status.

No kubelet runs here, so the test makes the pods itself (with the pipeline's labels and the prometheus.io/port
annotation of each server) and writes the pod status a kubelet would (Running, podIP 127.0.0.1); behind those
addresses run real step servers and a real gateway, under real load, started by the test on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from conveyor_operator.crd import PLURAL
from conveyor_operator.labels import labels
from conveyor_runtime.gateway import create_gateway
from conveyor_runtime.protocol import InferenceStub, encode_tensors, pb
from conveyor_runtime.spec import API_GROUP, API_VERSION
from tests.support.operator_fixtures import (  # noqa: F401 - fixtures
    Kube,
    kube,
    namespace,
    operator,
    pipeline_body,
    pipeline_crd,
    wait_for,
)
from tests.support.pipeline_fixtures import manifest
from tests.support.step_fixtures import running_step, step_spec

pytestmark = pytest.mark.controlplane

#: Two reads at least 10 s apart (operator.live.LIVE_INTERVAL_S), the first maybe before the pods ran: ~30 s.
LIVE_TIMEOUT_S = 120.0


def _steps(marker: Path) -> list[dict[str, Any]]:
    return [
        {"name": "pre", "op": "tests.support.step_fixtures:DoubleOp", "batching": {"maxBatchSize": 4}},
        {
            "name": "enc",
            "op": "tests.support.step_fixtures:SlowOp",
            "config": {"marker": str(marker), "delay": 0.02},
            "batching": {"maxBatchSize": 2, "maxQueueSize": 2},
        },
    ]


def _pod(kube: Kube, namespace: str, pipeline: str, name: str, component: str, step: str | None, metrics_port: int) -> None:
    """A pod as the operator's Deployments would have it, Running at 127.0.0.1 with its metrics port annotated."""
    body = {
        "metadata": {
            "name": name,
            "labels": labels(pipeline, component, step),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(metrics_port),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": {"containers": [{"name": component, "image": "conveyor:test"}]},
    }
    kube.core.create_namespaced_pod(namespace, body)
    kube.core.patch_namespaced_pod_status(
        name, namespace, {"status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}}
    )


def _request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="live")
    encode_tensors(request, [("x", np.ones((1, 2), dtype=np.float32))])
    return request


async def _load(address: str, model: str, stop: asyncio.Event, senders: int) -> dict[str, int]:
    """Requests from `senders` concurrent callers until `stop`; answers counted by status code."""
    codes: dict[str, int] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = InferenceStub(channel)

        async def send() -> None:
            request = _request()
            request.model_name = model
            while not stop.is_set():
                try:
                    await stub.ModelInfer(request, timeout=10)
                    codes["OK"] = codes.get("OK", 0) + 1
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
                    await asyncio.sleep(0.005)

        await asyncio.gather(*(send() for _ in range(senders)))
    return codes


@contextlib.asynccontextmanager
async def _servers(marker: Path) -> AsyncIterator[dict[str, Any]]:
    pre_spec, enc_spec = (step_spec(**step) for step in _steps(marker))
    async with running_step(pre_spec, metrics_port=0) as pre, running_step(enc_spec, metrics_port=0) as enc:
        gateway = create_gateway(
            manifest("live", [{"name": "pre", "op": "identity"}]),
            endpoints={"pre": [f"127.0.0.1:{pre.port}"]},
            host="127.0.0.1",
            grpc_port=0,
            http_port=None,
            metrics_port=0,
        )
        await gateway.start()
        try:
            assert await gateway.wait_ready(10)
            yield {"pre": pre, "enc": enc, "gateway": gateway}
        finally:
            await gateway.stop(1.0)


def _table(kube: Kube, namespace: str) -> dict[str, Any]:
    """`kubectl get ipl`'s server-side table: the CRD's printer columns and the row."""
    host = kube.api_client.configuration.host
    token = kube.api_client.configuration.api_key.get("authorization") or kube.api_client.configuration.api_key.get(
        "BearerToken", ""
    )
    headers = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}
    if token:
        headers["Authorization"] = token if token.startswith("Bearer") else f"Bearer {token}"
    response = kube.api_client.call_api(
        "GET", f"{host}/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{PLURAL}", header_params=headers
    )
    table = json.loads(response.read())
    columns = [c["name"] for c in table["columnDefinitions"] if c.get("priority", 0) == 0]
    return dict(zip(columns, table["rows"][0]["cells"], strict=False))


async def test_operator_writes_live_figures_the_bottleneck_and_saturated_from_the_pods_metrics(
    kube: Kube, namespace: str, operator: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    kube.create_pipeline(namespace, pipeline_body("live", *_steps(marker)))
    async with _servers(marker) as servers:
        _pod(kube, namespace, "live", "live-pre-a", "step", "pre", servers["pre"].metrics_port)
        _pod(kube, namespace, "live", "live-enc-a", "step", "enc", servers["enc"].metrics_port)
        _pod(kube, namespace, "live", "live-gateway-a", "gateway", None, servers["gateway"].metrics_port)
        stop = asyncio.Event()
        through_gateway = asyncio.create_task(_load(f"127.0.0.1:{servers['gateway'].grpc_port}", "live", stop, senders=2))
        to_enc = asyncio.create_task(_load(f"127.0.0.1:{servers['enc'].port}", "enc", stop, senders=6))

        def busy_status() -> dict[str, Any] | None:
            status = kube.get_pipeline(namespace, "live").get("status") or {}
            live = status.get("live") or {}
            steps = {s["name"]: s for s in live.get("steps") or []}
            saturated = next((c for c in status.get("conditions") or [] if c["type"] == "Saturated"), {})
            fed = steps.get("pre", {}).get("completedRequestsPerSecond", 0) > 0 and steps.get("enc", {}).get("utilization", 0) > 0
            return status if fed and live.get("throughputPerSecond", 0) > 0 and saturated.get("status") == "True" else None

        try:
            status = await asyncio.to_thread(wait_for, busy_status, "live figures of a loaded pipeline", LIVE_TIMEOUT_S, 1.0)
        finally:
            stop.set()
            codes = {"gateway": await through_gateway, "enc": await to_enc}

    live = status["live"]
    steps = {s["name"]: s for s in live["steps"]}
    assert codes["enc"].get("RESOURCE_EXHAUSTED", 0) > 0, codes  # the load did overflow enc's queue
    assert [s["name"] for s in live["steps"]] == ["pre", "enc"]
    assert live["bottleneck"] == "enc" and live["bottleneckReason"].startswith("enc: ")
    assert steps["enc"]["utilization"] > steps["pre"]["utilization"]
    assert steps["enc"]["errorsPerSecond"]["RESOURCE_EXHAUSTED"] > 0
    # SlowOp sleeps 20 ms per batch: the median lies in the (10, 25] ms bucket or above, and the estimate interpolates
    # inside that bucket as Prometheus' histogram_quantile does (17.5 ms when every batch took 10-25 ms)
    assert steps["enc"]["computeP50Ms"] > 10
    assert steps["pre"]["pods"] == 1 and steps["pre"]["meanBatchSize"] >= 1
    assert live["throughput"].endswith("/s") and live["p99"] != "-"
    saturated = next(c for c in status["conditions"] if c["type"] == "Saturated")
    assert (
        saturated["reason"] == "StepSaturated"
        and "step 'enc'" in saturated["message"]
        and "RESOURCE_EXHAUSTED" in saturated["message"]
    )
    assert "step 'pre'" not in saturated["message"]
    assert [c["type"] for c in status["conditions"]] == ["Ready", "Progressing", "Degraded", "Saturated"]
    row = _table(kube, namespace)
    assert (row["Throughput"], row["P99"], row["Bottleneck"]) == (live["throughput"], live["p99"], "enc")
    wait_for(lambda: [e for e in kube.events(namespace, "live") if e.reason == "Saturated" and "step 'enc'" in e.message],
             "a Saturated event naming enc")  # fmt: skip


async def test_operator_autoscales_a_step_from_its_measured_capacity_and_arrival_rate_and_back(
    kube: Kube, namespace: str, operator: Any, tmp_path: Path
) -> None:
    """enc computes one row per 20 ms batch (~50 rows/s flat out); four closed-loop callers keep it fully busy, so at
    a 50% target it needs 2 or 3 replicas; once they stop, no items arrive and it goes back to its minimum. Windows
    are 0 s here: the stabilization itself is unit-tested (tests/unit/test_autoscaling.py)."""
    marker = tmp_path / "marker"
    pre, enc = _steps(marker)
    enc = {**enc, "batching": {"maxBatchSize": 1, "maxQueueSize": 64}, "autoscaling": {
        "minReplicas": 1, "maxReplicas": 3, "targetUtilization": 0.5, "scaleUpWindowSeconds": 0, "scaleDownWindowSeconds": 0}}  # fmt: skip
    kube.create_pipeline(namespace, pipeline_body("auto", pre, enc))
    wait_for(lambda: kube.deployment(namespace, "auto-enc"), "auto-enc's Deployment")
    async with running_step(step_spec(**enc), metrics_port=0) as server:
        _pod(kube, namespace, "auto", "auto-enc-a", "step", "enc", server.metrics_port)
        stop = asyncio.Event()
        load = asyncio.create_task(_load(f"127.0.0.1:{server.port}", "enc", stop, senders=4))

        def replicas() -> int:
            return int(kube.apps.read_namespaced_deployment("auto-enc", namespace).spec.replicas)

        try:
            up = await asyncio.to_thread(wait_for, lambda: replicas() > 1 and replicas(), "enc scaled up", LIVE_TIMEOUT_S, 1.0)
        finally:
            stop.set()
            codes = await load
        down = await asyncio.to_thread(wait_for, lambda: replicas() == 1, "enc back to 1", LIVE_TIMEOUT_S, 1.0)

    assert codes.get("OK", 0) > 0 and set(codes) == {"OK"}, codes
    assert up in (2, 3) and down
    assert kube.apps.read_namespaced_deployment("auto-pre", namespace).spec.replicas == 1  # not autoscaled: as written

    def autoscaled() -> list[str] | None:  # the events are posted right after the status write that follows the scaling
        messages = [e.message for e in kube.events(namespace, "auto") if e.reason == "Autoscaled"]
        return messages if len(messages) >= 2 else None

    messages = wait_for(autoscaled, "both Autoscaled events")
    assert any(m.startswith(f"step 'enc': replicas 1 -> {up}: ") and "items/s arrive" in m for m in messages), messages
    # down on the first window after the load stopped (a few items/s of its tail) or the next (none arrive)
    assert any(m.startswith(f"step 'enc': replicas {up} -> 1: ") for m in messages), messages
