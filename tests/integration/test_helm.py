"""The Helm chart: lint, offline schema validation of what it renders, and its RBAC running the real operator."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kopf.testing import KopfRunner

from conveyor_operator.cluster import Cluster
from conveyor_operator.config import OperatorConfig
from conveyor_operator.handlers import build_registry
from tests.support.operator_fixtures import (  # noqa: F401 - fixtures
    RECONCILE_INTERVAL,
    TEST_IMAGE,
    Kube,
    kube,
    namespace,
    pipeline_body,
    pipeline_crd,
    wait_for,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "conveyor"
#: Kubernetes version the rendered manifests are validated against (the control plane's minor).
K8S_VERSION = "1.36.0"


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary from scripts/install-helm.sh (fast when already built)."""
    try:
        done = subprocess.run(
            ["bash", str(REPO_ROOT / "scripts" / "install-helm.sh")], capture_output=True, text=True, timeout=1200, check=True
        )
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"scripts/install-helm.sh failed:\n{exc.stderr[-2000:]}", pytrace=False)
    return done.stdout.strip().splitlines()[-1]


def _template(helm: str, *values: str, namespace: str = "conveyor-system", crds: bool = True) -> list[dict[str, Any]]:
    args = [helm, "template", "conveyor", str(CHART), "--namespace", namespace]
    if crds:
        args.append("--include-crds")
    for value in values:
        args += ["--set", value]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def test_helm_lint_is_clean(helm: str) -> None:
    done = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize(
    "values",
    [
        (),
        ("watchNamespaces={team-a,team-b}", "pipelineImage=conveyor:0.1.0-gpu"),
        ("serviceAccount.create=false", "rbac.create=false", "image.tag=dev"),
    ],
    ids=["defaults", "namespaced", "no-rbac"],
)
def test_helm_template_validates_against_the_kubernetes_schemas(helm: str, values: tuple[str, ...]) -> None:
    documents = _template(helm, *values)
    kinds = sorted(doc["kind"] for doc in documents)
    assert "CustomResourceDefinition" in kinds and "Deployment" in kinds
    for doc in documents:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    operator = next(d for d in documents if d["kind"] == "Deployment")
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-1] == "operator"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    if "watchNamespaces={team-a,team-b}" in values:
        assert sorted(d["metadata"]["namespace"] for d in documents if d["kind"] == "Role") == ["team-a", "team-b"]
        cluster_role = next(d for d in documents if d["kind"] == "ClusterRole")
        assert {g for rule in cluster_role["rules"] for g in rule["apiGroups"]} == {"apiextensions.k8s.io", ""}


def test_helm_chart_installs_the_committed_crd_kept_on_uninstall(helm: str) -> None:
    crd = next(d for d in _template(helm) if d["kind"] == "CustomResourceDefinition")
    # A template (so `helm upgrade` upgrades it), kept by `helm uninstall`; Helm's labels on top of the committed file.
    assert crd["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    labels = crd["metadata"]["labels"]
    assert labels.pop("app.kubernetes.io/managed-by") == "Helm" and labels.pop("helm.sh/chart").startswith("conveyor-")
    assert crd == yaml.safe_load((REPO_ROOT / "crds" / "inferencepipelines.conveyor.dev.yaml").read_text())


def test_helm_chart_can_leave_the_crd_out(helm: str) -> None:
    assert "CustomResourceDefinition" not in {d["kind"] for d in _template(helm, "crds.install=false")}


@pytest.fixture
def operator_credentials(kube: Kube, helm: str, pipeline_crd: Any, tmp_path: Path, request: Any) -> Iterator[Path]:
    """A kubeconfig for the chart's ServiceAccount, with the chart's RBAC applied (params: watched namespaces)."""
    watched: list[str] = request.param
    release_ns = "conveyor-system"
    for ns in [release_ns, *watched]:
        Cluster(kube.api_client).apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    values = [f"watchNamespaces={{{','.join(watched)}}}"] if watched else []
    cluster = Cluster(kube.api_client, field_manager="helm-test")
    applied = []
    for doc in _template(helm, *values, namespace=release_ns, crds=False):
        if doc["kind"] != "Deployment":
            cluster.apply(doc)
            applied.append(doc)
    account = next(d for d in applied if d["kind"] == "ServiceAccount")["metadata"]["name"]
    token = kube.core.create_namespaced_service_account_token(
        account, release_ns, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    admin = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())  # the control plane's admin kubeconfig
    admin["users"][0]["user"] = {"token": token}
    path = tmp_path / "operator-kubeconfig"
    path.write_text(json.dumps(admin))
    try:
        yield path
    finally:
        for doc in reversed(applied):
            if doc["kind"] in {"ClusterRole", "ClusterRoleBinding"}:
                cluster.delete(doc["apiVersion"], doc["kind"], "", doc["metadata"]["name"])


@pytest.mark.controlplane
@pytest.mark.parametrize("operator_credentials", [[], ["conveyor-watched"]], indirect=True, ids=["cluster", "namespaced"])
def test_helm_rbac_is_enough_for_the_operator(
    kube: Kube, operator_credentials: Path, monkeypatch: pytest.MonkeyPatch, request: Any
) -> None:
    watched = request.node.callspec.params["operator_credentials"]
    target = watched[0] if watched else "conveyor-rbac"
    Cluster(kube.api_client).apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": target}})
    monkeypatch.setenv("KUBECONFIG", str(operator_credentials))
    registry = build_registry(OperatorConfig(image=TEST_IMAGE, reconcile_interval=RECONCILE_INTERVAL))
    scope = ["--namespace", target] if watched else ["--all-namespaces"]
    name = "rbac-" + ("ns" if watched else "all")
    with KopfRunner(["run", "--standalone", *scope], registry=registry, timeout=60) as runner:
        kube.create_pipeline(target, pipeline_body(name, {"name": "pre", "op": "identity"}))
        wait_for(
            lambda: (kube.get_pipeline(target, name).get("status") or {}).get("observedGeneration") == 1,
            "the operator, as the chart's ServiceAccount, to reconcile and write status",
        )
        assert kube.deployment(target, f"{name}-pre") is not None
        wait_for(lambda: kube.events(target, name), "an Event posted by the operator")
    assert runner.exit_code == 0 and runner.exception is None
    # an HTTP 403 in any form ("(403)", "403 Forbidden", "status=403"), but not a log timestamp's ",403" ms
    http_403 = re.search(r"(?<![\d,.:])403(?!\d)", runner.output)
    assert "Forbidden" not in runner.output and http_403 is None, runner.output[-3000:]
