"""Issue 10 (live status) on real pods: under load through the gateway Service, the operator (in its pod) reads the
step and gateway pods' metrics endpoints and `kubectl get ipl` shows THROUGHPUT, P99 and BOTTLENECK filled in."""

from __future__ import annotations

from typing import Any

from tests.e2e.fixtures_pods import conveyor, conveyor_image, helm  # noqa: F401 - fixtures
from tests.e2e.served import ranked, serving  # noqa: F401 - fixtures
from tests.support.pods import Pipeline, wait_for

#: Two reads of the pods at least 10 s apart, each at a resync (15 s): the figures show within ~45 s of load.
LIVE_WAIT_S = 180.0


def _loaded(pipeline: Pipeline) -> dict[str, Any] | None:
    status = pipeline.get().get("status") or {}
    live = status.get("live") or {}
    steps = {s["name"]: s for s in live.get("steps") or []}
    busy = live.get("throughputPerSecond", 0) > 0 and steps.get("rank", {}).get("completedItemsPerSecond", 0) > 0
    return status if busy and live.get("bottleneck") else None


def test_live_columns_fill_in_under_load_from_the_pods_metrics(ranked: Pipeline) -> None:
    load = serving(ranked)
    try:
        start = load.now()
        status = wait_for(lambda: _loaded(ranked), LIVE_WAIT_S, "status.live with traffic")
        shown_at = load.now()
        table = ranked.cluster.kubectl("get", "ipl", ranked.name, "-n", ranked.namespace)
        wide = ranked.cluster.kubectl("get", "ipl", ranked.name, "-n", ranked.namespace, "-o", "wide")
        described = ranked.cluster.kubectl("describe", "ipl", ranked.name, "-n", ranked.namespace)
    finally:
        load.stop()
    print(f"live status shown {shown_at - start:.1f}s after load began; load: {load.summary(start, shown_at)}")
    print(table)
    print(wide)
    print(described[described.find("Live:") :][:3000])
    live = status["live"]
    header, row = (line.split() for line in table.strip().splitlines())
    assert header == ["NAME", "READY", "STEPS", "REPLICAS", "THROUGHPUT", "P99", "BOTTLENECK", "ENDPOINT", "AGE"]
    cells = dict(zip(header, row, strict=True))
    assert (cells["THROUGHPUT"], cells["P99"], cells["BOTTLENECK"]) == (live["throughput"], live["p99"], "rank")
    assert live["throughput"].endswith("/s") and live["p99"] != "-"
    steps = {s["name"]: s for s in live["steps"]}
    assert list(steps) == ["relay", "rank"]
    assert steps["rank"]["pods"] == 2 and steps["rank"]["utilization"] > 0 and steps["rank"]["meanBatchSize"] >= 1
    assert steps["relay"]["completedRequestsPerSecond"] > 0  # identity: answers without a batcher, so never busy
    saturated = next(c for c in status["conditions"] if c["type"] == "Saturated")
    assert saturated["status"] == "False", saturated  # 40 requests/s is far below what topk does
    assert "Bottleneck Reason:" in described and "Arrival Items Per Second:" in described
    assert not load.failures(start, shown_at), load.summary(start, shown_at)
