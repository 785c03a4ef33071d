"""`helm install` of charts/conveyor on a real node: the operator runs as a pod, as the chart's least-privilege
ServiceAccount (issue 13, item 1)."""

from __future__ import annotations

import json

from tests.e2e.fixtures_pods import conveyor, conveyor_image, helm  # noqa: F401 - fixtures
from tests.support.pods import IMAGE, Release, kubectl_json

#: What the operator must never be allowed to do (cluster-admin could): (verb, resource, namespace or "" for all).
FORBIDDEN = [
    ("create", "clusterrolebindings", ""),
    ("delete", "nodes", ""),
    ("get", "secrets", "kube-system"),
    ("list", "secrets", ""),
    ("create", "pods", "default"),
    ("delete", "namespaces", ""),
    ("update", "customresourcedefinitions", ""),
    ("impersonate", "serviceaccounts", ""),
    ("create", "pods/exec", "conveyor-system"),
]
#: What it needs in any namespace (it watches all of them by default).
NEEDED = [
    ("watch", "inferencepipelines.conveyor.dev", ""),
    ("patch", "inferencepipelines.conveyor.dev/status", "default"),
    ("create", "deployments.apps", "default"),
    ("delete", "services", "default"),
    ("create", "events", "default"),
    ("watch", "pods", ""),
]


def _can_i(release: Release, verb: str, resource: str, namespace: str) -> bool:
    subject = f"system:serviceaccount:{release.namespace}:{release.service_account}"
    scope = ["-n", namespace] if namespace else ["--all-namespaces"]
    answer = release.cluster.kubectl("auth", "can-i", verb, resource, *scope, f"--as={subject}", check=False).strip()
    assert answer in {"yes", "no"}, f"kubectl auth can-i {verb} {resource}: {answer!r}"
    return answer == "yes"


def test_helm_install_runs_the_operator_as_a_ready_pod_of_the_local_image(conveyor: Release) -> None:
    pod = conveyor.operator_pod()
    obj = kubectl_json(conveyor.cluster, "get", "pod", pod.name, "-n", conveyor.namespace)
    # Ready (its restart count is not asserted: the fault tests kill the operator's container on purpose).
    assert pod.ready, obj["status"]
    container = obj["spec"]["containers"][0]
    assert container["image"] == IMAGE and container["imagePullPolicy"] == "Never"
    releases = json.loads(conveyor.helm("list", "-n", conveyor.namespace, "-o", "json"))
    assert [(r["name"], r["status"]) for r in releases] == [(conveyor.name, "deployed")]


def test_operator_pod_uses_the_charts_service_account_bound_only_to_the_charts_role(conveyor: Release) -> None:
    pod = kubectl_json(conveyor.cluster, "get", "pod", conveyor.operator_pod().name, "-n", conveyor.namespace)
    account = pod["spec"]["serviceAccountName"]
    assert account == conveyor.service_account != "default"
    bindings = [
        binding
        for kind in ("clusterrolebindings", "rolebindings")
        for binding in kubectl_json(conveyor.cluster, "get", kind, "--all-namespaces")["items"]
        if any(
            s.get("kind") == "ServiceAccount" and s.get("name") == account and s.get("namespace") == conveyor.namespace
            for s in binding.get("subjects") or []
        )
    ]
    roles = {(b["kind"], b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings}
    assert roles == {("ClusterRoleBinding", "ClusterRole", f"{conveyor.name}")}, roles
    # The chart's own ClusterRole, labelled by Helm for this release.
    role = kubectl_json(conveyor.cluster, "get", "clusterrole", conveyor.name)
    assert role["metadata"]["annotations"]["meta.helm.sh/release-name"] == conveyor.name


def test_operator_service_account_may_do_what_it_needs_and_nothing_an_admin_could(conveyor: Release) -> None:
    allowed = [rule for rule in FORBIDDEN if _can_i(conveyor, *rule)]
    assert allowed == [], f"the operator's ServiceAccount may {allowed}: more than least privilege"
    missing = [rule for rule in NEEDED if not _can_i(conveyor, *rule)]
    assert missing == [], f"the operator's ServiceAccount may not {missing}"


def test_operator_logs_in_with_its_service_account_token(conveyor: Release) -> None:
    # kopf logs in with the kubernetes client's in-cluster configuration: ask the API server who that is.
    who_am_i = (
        "import json, kubernetes as k; k.config.load_incluster_config(); "
        "r = k.client.AuthenticationV1Api().create_self_subject_review({'apiVersion': 'authentication.k8s.io/v1', "
        "'kind': 'SelfSubjectReview'}); print(json.dumps(r.status.user_info.to_dict()))"
    )
    pod = conveyor.operator_pod()
    out = conveyor.cluster.kubectl("exec", "-n", conveyor.namespace, pod.name, "--", "python", "-c", who_am_i)
    user = json.loads(out.strip().splitlines()[-1])
    assert user["username"] == f"system:serviceaccount:{conveyor.namespace}:{conveyor.service_account}"
    assert "system:masters" not in (user.get("groups") or [])


def test_operator_logs_show_no_forbidden_answer(conveyor: Release) -> None:
    assert conveyor.operator_logs().strip(), "the operator logged nothing"
    forbidden = conveyor.forbidden_log_lines()
    assert forbidden == [], "\n".join(forbidden[:20])
