"""Issue 13 items 4 and 5 on real pods, under steady load through the gateway Service: editing a step's replicas
changes only that Deployment's replica count and restarts no pod; changing a step's batching or config rolls only
that step; neither loses a request."""

from __future__ import annotations

import time

import pytest

from tests.e2e.fixtures_pods import conveyor, conveyor_image, helm  # noqa: F401 - fixtures
from tests.e2e.served import ranked, serving, snapshot, step_pods, templates  # noqa: F401 - fixtures
from tests.support.pods import Pipeline, wait_for

#: Seconds of load after a change settles, so that a late failure would show.
SETTLE_S = 5.0
#: Generous: new pods start in seconds; this only bounds a hung test (the issue sets no limit to assert).
WAIT_S = 120.0


def _scale(pipeline: Pipeline, replicas: int) -> None:
    pipeline.patch([{"op": "replace", "path": "/spec/steps/1/replicas", "value": replicas}])


def _ready_pods(pipeline: Pipeline, step: str, count: int) -> list[str] | None:
    pods = pipeline.pods(component="step", step=step)
    return sorted(p.name for p in pods) if len(pods) == count and all(p.ready and not p.deleting for p in pods) else None


def test_scaling_a_step_under_load_changes_only_its_replica_count_restarts_no_pod_and_loses_no_request(
    ranked: Pipeline,
) -> None:
    before, shapes = snapshot(ranked), templates(ranked)
    load = serving(ranked)
    try:
        up_at = load.now()
        _scale(ranked, 4)
        ranked.wait_ready(timeout=WAIT_S)
        wait_for(lambda: _ready_pods(ranked, "rank", 4), WAIT_S, "4 ready pods of rank")
        ready_at = load.now()
        new = [p for p in step_pods(ranked, "rank") if p.name not in before]
        assert len(new) == 2
        # every new pod gets requests through the gateway (it finds them at its next DNS refresh)
        wait_for(lambda: all(ranked.metric(p, "conveyor_step_requests_total", code="OK") > 0 for p in new) or None,
                 WAIT_S, "requests answered by each new rank pod")
        traffic_at = load.now()
        after_up = snapshot(ranked)
        assert {n: (p.uid, p.restarts) for n, p in after_up.items() if n in before} == {
            n: (p.uid, p.restarts) for n, p in before.items()
        }, "a pod was replaced or restarted by scaling up"
        now = templates(ranked)
        assert {n: t for n, (t, _) in now.items()} == {n: t for n, (t, _) in shapes.items()}, "a pod template changed"
        assert {n: g for n, (_, g) in now.items() if n != "ranked-rank"} == {
            n: g for n, (_, g) in shapes.items() if n != "ranked-rank"}, "another Deployment changed"
        deployments = ranked.deployments()
        assert {n: d["spec"]["replicas"] for n, d in deployments.items()} == {
            "ranked-relay": 1, "ranked-rank": 4, "ranked-gateway": 1}

        down_at = load.now()
        _scale(ranked, 1)
        wait_for(lambda: len(ranked.pods(component="step", step="rank")) == 1 or None, WAIT_S, "rank back to 1 pod")
        ranked.wait_ready(timeout=WAIT_S)
        time.sleep(SETTLE_S)
        end = load.now()
    finally:
        load.stop()
    after_down = snapshot(ranked)
    assert set(after_down) <= set(after_up)
    assert {n: (p.uid, p.restarts) for n, p in after_down.items()} == {
        n: (p.uid, p.restarts) for n, p in after_up.items() if n in after_down}, "a pod restarted while scaling down"
    assert {p.name for p in after_down.values() if p.component != "step" or p.step != "rank"} == {
        p.name for p in before.values() if p.component != "step" or p.step != "rank"}
    print(f"scale-up {load.summary(up_at, down_at)}; ready after {ready_at - up_at:.1f}s, new pods served after "
          f"{traffic_at - up_at:.1f}s; scale-down {load.summary(down_at, end)}")
    assert not load.failures(up_at, down_at), f"scaling up lost requests: {load.summary(up_at, down_at)}"
    assert not load.failures(down_at, end), f"scaling down lost requests: {load.summary(down_at, end)}"


@pytest.mark.parametrize(
    ("what", "path", "value"),
    [
        ("batching", "/spec/steps/1/batching/maxBatchSize", 4),
        # the op's config (softmax changes the scores, not the indices the load checks); the gateway asks the new
        # pods for their tensor names instead of rolling
        ("config", "/spec/steps/1/config/softmax", True),
    ],
)
def test_changing_a_steps_settings_under_load_rolls_only_that_step_and_loses_no_request(
    ranked: Pipeline, what: str, path: str, value: object
) -> None:
    before, shapes = snapshot(ranked), templates(ranked)
    old_rank = {p.name for p in step_pods(ranked, "rank")}
    load = serving(ranked)
    try:
        start = load.now()
        ranked.patch([{"op": "replace", "path": path, "value": value}])
        ranked.wait_ready(timeout=WAIT_S)
        wait_for(lambda: ((pods := step_pods(ranked, "rank")) and not {p.name for p in pods} & old_rank
                 and len(ranked.pods(component="step", step="rank")) == len(old_rank)) or None,
                 WAIT_S, "rank's pods replaced")
        time.sleep(SETTLE_S)
        end = load.now()
    finally:
        load.stop()
    after = snapshot(ranked)
    others = {n: (p.uid, p.restarts) for n, p in before.items() if p.step != "rank"}
    assert {n: (p.uid, p.restarts) for n, p in after.items() if p.step != "rank"} == others, "another step or the gateway rolled"
    now = templates(ranked)
    assert {n: v for n, v in now.items() if n != "ranked-rank"} == {n: v for n, v in shapes.items() if n != "ranked-rank"}
    assert now["ranked-rank"] != shapes["ranked-rank"]
    print(f"{what} change: {load.summary(start, end)}")
    assert not load.failures(start, end), f"the roll lost requests: {load.summary(start, end)}"
