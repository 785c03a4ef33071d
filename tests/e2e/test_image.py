"""The image built from the Dockerfile without a Docker engine (scripts/build-image.sh) runs on the node as the operator
runs it: a pod with the step Deployment's own pod spec (non-root uid 10001, read-only root filesystem, all
capabilities dropped, seccomp RuntimeDefault, emptyDirs at the working directory and /tmp)."""

from __future__ import annotations

import hashlib
import json
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor_operator.render import RUN_AS_USER, WORK_DIR, Owner, render_step_deployment
from conveyor_runtime.spec import StepSpec
from tests.support.cluster import Cluster
from tests.support.image import ensure_image

NAMESPACE = "e2e-image"
REPO = Path(__file__).resolve().parents[2]
POD = "image-probe"
#: The CA bundle the build hands to pip (this machine's; see scripts/build-image.sh): it must not end up in the image.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

#: Runs in the pod as its only process and prints one JSON line of what it found.
PROBE = r"""
import errno, hashlib, importlib.metadata, json, os, subprocess, sys

def run(*argv):
    done = subprocess.run(list(argv), capture_output=True, text=True)
    return {"rc": done.returncode, "out": done.stdout.strip()[-2000:], "err": done.stderr.strip()[-2000:]}

facts = {"uid": os.getuid(), "gid": os.getgid(), "writable": {}}
for path in ("/probe", os.environ["WORK_DIR"] + "/probe", "/tmp/probe"):
    try:
        with open(path, "w") as f:
            f.write("x")
        facts["writable"][path] = "yes"
    except OSError as exc:
        facts["writable"][path] = errno.errorcode.get(exc.errno, str(exc.errno))
facts["conveyor_help"] = run("conveyor", "--help")
facts["conveyor_version"] = importlib.metadata.version("conveyor")
facts["onnxruntime"] = run(sys.executable, "-c", "import onnxruntime as o; print(o.__version__, *o.get_available_providers())")
facts["pip_config"] = run(sys.executable, "-m", "pip", "config", "list")
facts["pip_config_files"] = run(sys.executable, "-m", "pip", "config", "debug")
facts["build_env"] = sorted(k for k in os.environ if k in {"PIP_CONFIG_FILE", "PIP_CERT", "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"})
facts["mnt"] = sorted(os.listdir("/mnt"))
size, digest = int(os.environ["HOST_CA_SIZE"]), os.environ["HOST_CA_SHA256"]
skip = {"/proc", "/sys", "/dev", os.environ["WORK_DIR"], "/tmp"}
facts["ca_copies"] = []
for root, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in skip]
    for name in files:
        path = os.path.join(root, name)
        try:
            if os.lstat(path).st_size == size and hashlib.sha256(open(path, "rb").read()).hexdigest() == digest:
                facts["ca_copies"].append(path)
        except OSError:
            pass
print(json.dumps(facts))
"""


def _probe_pod(image: str, ca_size: int, ca_sha256: str) -> dict[str, Any]:
    """The operator's step pod spec, running PROBE once instead of the step server."""
    step = StepSpec.model_validate({"name": "probe", "op": "identity"})
    spec = render_step_deployment(Owner(name=POD, namespace=NAMESPACE), step, image)["spec"]["template"]["spec"]
    container = spec["containers"][0]
    for key in ("startupProbe", "readinessProbe", "livenessProbe", "ports", "args"):
        container.pop(key, None)
    container["command"] = ["python", "-c", PROBE]
    container["imagePullPolicy"] = "Never"
    container["env"] += [
        {"name": "WORK_DIR", "value": WORK_DIR},
        {"name": "HOST_CA_SIZE", "value": str(ca_size)},
        {"name": "HOST_CA_SHA256", "value": ca_sha256},
    ]
    spec["restartPolicy"] = "Never"
    spec["terminationGracePeriodSeconds"] = 1
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": POD, "namespace": NAMESPACE}, "spec": spec}


@pytest.fixture(scope="module")
def probe(cluster: Cluster) -> Iterator[dict[str, Any]]:
    """What PROBE found in a pod of conveyor:dev (built and loaded by scripts/build-image.sh)."""
    image = ensure_image(cluster)
    ca = HOST_CA_BUNDLE.read_bytes()
    pod = _probe_pod(image, len(ca), hashlib.sha256(ca).hexdigest())
    cluster.apply(json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
    cluster.apply(json.dumps(pod))
    try:
        phase = _finished_phase(cluster, timeout=300.0)
        logs = cluster.kubectl("logs", POD, "-n", NAMESPACE)
        assert phase == "Succeeded", f"pod {POD} {phase}: {logs[-3000:]}"
        yield json.loads(logs.strip().splitlines()[-1])
    finally:
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def test_image_runs_as_the_operator_runs_it_non_root_with_a_read_only_root(probe: dict[str, Any]) -> None:
    assert (probe["uid"], probe["gid"]) == (RUN_AS_USER, RUN_AS_USER)
    assert probe["writable"] == {"/probe": "EROFS", f"{WORK_DIR}/probe": "yes", "/tmp/probe": "yes"}


def test_image_serves_the_conveyor_cli_and_loads_onnxruntime(probe: dict[str, Any]) -> None:
    assert probe["conveyor_help"]["rc"] == 0, probe["conveyor_help"]
    assert "usage: conveyor" in probe["conveyor_help"]["out"]
    assert probe["conveyor_version"] == _pyproject_version()
    assert probe["onnxruntime"]["rc"] == 0, probe["onnxruntime"]
    assert "CPUExecutionProvider" in probe["onnxruntime"]["out"].split()


def test_image_keeps_no_pip_config_or_ca_bundle_of_the_build(probe: dict[str, Any]) -> None:
    assert probe["pip_config"]["rc"] == 0, probe["pip_config"]
    # ':env:' lines are the image's own ENV (PIP_NO_CACHE_DIR...); anything else comes from a configuration file.
    assert [line for line in probe["pip_config"]["out"].splitlines() if not line.startswith(":env:")] == []
    assert "exists: True" not in probe["pip_config_files"]["out"], probe["pip_config_files"]["out"]
    assert probe["build_env"] == []
    assert probe["mnt"] == [], "the build's pip mount point (/mnt) is not empty"
    # The image's own bundle is left out: it equals this machine's where this machine has Debian's stock bundle.
    assert [path for path in probe["ca_copies"] if path != IMAGE_CA_BUNDLE] == []


def _finished_phase(cluster: Cluster, timeout: float) -> str:
    """The probe pod's phase once it has run to the end (Succeeded or Failed)."""
    deadline = time.monotonic() + timeout
    phase = ""
    while time.monotonic() < deadline:
        phase = cluster.kubectl("get", "pod", POD, "-n", NAMESPACE, "-o", "jsonpath={.status.phase}").strip()
        if phase in {"Succeeded", "Failed"}:
            return phase
        time.sleep(1)
    raise AssertionError(f"pod {POD} still {phase or 'not started'} after {timeout:.0f}s")


def _pyproject_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])
