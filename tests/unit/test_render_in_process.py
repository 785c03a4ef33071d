"""Rendering in-process edges (`inProcessWith`): a guest has no Deployment, its headless Service selects its host's
pods, and the host's pods are told which steps they also serve."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from conveyor_operator.labels import STEP_LABEL
from conveyor_operator.render import Owner, render_children
from conveyor_runtime.spec import IN_PROCESS_STEPS_ENV, PipelineSpec, in_process_steps_from_env, step_from_env

OWNER = Owner(name="demo", namespace="ml", uid="0000-1111")


def _spec(**guest: Any) -> PipelineSpec:
    """pre (a guest of cls) -> cls (3 replicas) -> post."""
    return PipelineSpec.model_validate(
        {
            "steps": [
                {
                    "name": "pre",
                    "op": "preprocess",
                    "config": {"size": 32},
                    "batching": {"maxBatchSize": 8},
                    "inProcessWith": "cls",
                    **guest,
                },
                {"name": "cls", "op": "identity", "replicas": 3, "batching": {"maxBatchSize": 32}},
                {"name": "post", "op": "topk"},
            ]
        }
    )


def _standalone() -> PipelineSpec:
    data = _spec().model_dump(exclude_unset=True)
    del data["steps"][0]["inProcessWith"]
    return PipelineSpec.model_validate(data)


def _by_name(children: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["kind"], c["metadata"]["name"]): c for c in children}


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


def test_render_in_process_guest_has_a_service_but_no_deployment() -> None:
    children = render_children(OWNER, _spec())
    assert [(c["kind"], c["metadata"]["name"]) for c in children] == [
        ("ConfigMap", "demo-graph"),
        ("Service", "demo-pre"),
        ("Service", "demo-cls"),
        ("Deployment", "demo-cls"),
        ("Service", "demo-post"),
        ("Deployment", "demo-post"),
        ("Service", "demo-gateway"),
        ("Deployment", "demo-gateway"),
    ]


def test_render_in_process_guest_service_selects_the_host_pods_with_the_step_services_labels_and_ports() -> None:
    children = _by_name(render_children(OWNER, _spec()))
    guest, host = children[("Service", "demo-pre")], children[("Service", "demo-cls")]
    host_pods = children[("Deployment", "demo-cls")]["spec"]["template"]["metadata"]["labels"]
    post_pods = children[("Deployment", "demo-post")]["spec"]["template"]["metadata"]["labels"]
    assert guest["spec"]["selector"] == host["spec"]["selector"]
    assert guest["spec"]["selector"].items() <= host_pods.items()
    assert not guest["spec"]["selector"].items() <= post_pods.items()
    assert {k: v for k, v in guest["spec"].items() if k != "selector"} == {
        k: v for k, v in host["spec"].items() if k != "selector"
    }
    assert guest["spec"]["clusterIP"] == "None"
    assert guest["metadata"]["labels"][STEP_LABEL] == "pre"
    assert {k: v for k, v in guest["metadata"]["labels"].items() if k != STEP_LABEL} == {
        k: v for k, v in host["metadata"]["labels"].items() if k != STEP_LABEL
    }
    assert guest["metadata"]["ownerReferences"] == host["metadata"]["ownerReferences"]


def test_render_in_process_host_env_lists_its_guests_and_other_steps_lists_none() -> None:
    spec = _spec()
    children = _by_name(render_children(OWNER, spec))
    host_env = _env(children[("Deployment", "demo-cls")])
    assert step_from_env(host_env).name == "cls"
    assert host_env["CONVEYOR_MAX_BATCH_SIZE"] == "32"  # the host's own batching, not its guest's
    guests = in_process_steps_from_env(host_env)
    assert [g.name for g in guests] == ["pre"]
    assert guests[0].batching.maxBatchSize == 8 and guests[0].config == {"size": 32}
    assert IN_PROCESS_STEPS_ENV not in _env(children[("Deployment", "demo-post")])


def test_render_in_process_children_are_valid_kubernetes_objects() -> None:
    for child in render_children(OWNER, _spec()):
        kubernetes_validate.validate(child, "1.36.0", strict=True)


def test_render_in_process_scaling_the_host_changes_no_pod_template() -> None:
    """`replicas` of a host only changes its Deployment's count: its pods' env (the guests' list included) stays,
    and so do the other Deployments and every Service (the graph ConfigMap, which no pod template hashes, holds the
    manifest and so the count)."""
    base = _spec()
    data = base.model_dump(exclude_unset=True)
    data["steps"][1]["replicas"] = 5
    scaled = PipelineSpec.model_validate(data)
    before, after = _by_name(render_children(OWNER, base)), _by_name(render_children(OWNER, scaled))
    assert {key for key in before if before[key] != after[key]} == {("Deployment", "demo-cls"), ("ConfigMap", "demo-graph")}
    assert after[("Deployment", "demo-cls")]["spec"]["replicas"] == 5
    assert before[("Deployment", "demo-cls")]["spec"]["replicas"] == 3
    after[("Deployment", "demo-cls")]["spec"]["replicas"] = 3
    assert after[("Deployment", "demo-cls")] == before[("Deployment", "demo-cls")]


def test_render_in_process_editing_a_guest_rolls_its_host_only() -> None:
    data = _spec().model_dump(exclude_unset=True)
    data["steps"][0]["batching"] = {"maxBatchSize": 16}
    before, after = _by_name(render_children(OWNER, _spec())), _by_name(render_children(OWNER, PipelineSpec.model_validate(data)))
    changed = {key for key in before if before[key] != after[key]}
    assert changed == {("Deployment", "demo-cls"), ("ConfigMap", "demo-graph")}
    assert in_process_steps_from_env(_env(after[("Deployment", "demo-cls")]))[0].batching.maxBatchSize == 16


def test_render_in_process_a_guest_made_standalone_again_gets_its_deployment_and_own_service_back() -> None:
    children = _by_name(render_children(OWNER, _standalone()))
    deployment = children[("Deployment", "demo-pre")]
    assert step_from_env(_env(deployment)).name == "pre"
    assert IN_PROCESS_STEPS_ENV not in _env(children[("Deployment", "demo-cls")])
    assert children[("Service", "demo-pre")]["spec"]["selector"][STEP_LABEL] == "pre"
    assert children[("Service", "demo-pre")]["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"][
        "labels"
    ].items()


def test_render_in_process_does_not_roll_the_gateway() -> None:
    """The gateway reaches a guest by its Service name whichever pods serve it: making a step a guest (or not) does
    not restart the gateway's pods."""

    def template(spec: PipelineSpec) -> Any:
        return _by_name(render_children(OWNER, spec))[("Deployment", "demo-gateway")]["spec"]["template"]

    assert template(_spec()) == template(_standalone())


@pytest.mark.parametrize("hosts", [["cls"], ["cls", "cls"]])
def test_render_in_process_every_guest_of_a_host_is_listed_in_manifest_order(hosts: list[str]) -> None:
    steps: list[dict[str, Any]] = [{"name": "cls", "op": "identity"}]
    steps += [{"name": f"g{i}", "op": "identity", "inputs": ["cls"], "inProcessWith": h} for i, h in enumerate(hosts)]
    children = _by_name(render_children(OWNER, PipelineSpec.model_validate({"steps": steps, "output": "g0"})))
    listed = [g.name for g in in_process_steps_from_env(_env(children[("Deployment", "demo-cls")]))]
    assert listed == [f"g{i}" for i in range(len(hosts))]
    assert {name for kind, name in children if kind == "Deployment"} == {"demo-cls", "demo-gateway"}
