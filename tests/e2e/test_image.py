"""The image built from the Dockerfile without a Docker engine (scripts/build-image.sh) runs on the node as the operator
runs it: a pod with the step Deployment's own pod spec (non-root uid 10001, read-only root filesystem, all
capabilities dropped, seccomp RuntimeDefault, emptyDirs at the working directory and /tmp). The production image has
no scikit-learn and no demo model builders; the examples image (target `examples`) adds both and builds the digits
model in such a pod."""

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
EXAMPLES_POD = "examples-image-probe"
#: The Dockerfile's `examples` target, which scripts/build-image.sh loads beside conveyor:dev.
EXAMPLES_IMAGE = "conveyor-examples:dev"
#: What only the examples image may have: the examples' package, scikit-learn and scipy (which only it pulls in).
EXAMPLES_ONLY_MODULES = ("conveyor_examples", "sklearn", "scipy")
#: The CA bundle the build hands to pip (this machine's; see scripts/build-image.sh): it must not end up in the image.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

#: Runs in the pod as its only process and prints one JSON line of what it found.
PROBE = r"""
import errno, hashlib, importlib.metadata, importlib.util, json, os, re, subprocess, sys

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
facts["modules"] = {name: importlib.util.find_spec(name) is not None for name in os.environ["MODULES"].split()}
def normalized(name):
    return re.sub(r"[-_.]+", "-", name).lower()

def closure(name):  # the installed distributions `name` needs, itself included
    seen, todo = set(), [name]
    while todo:
        try:
            requires = importlib.metadata.requires(todo[-1]) or []
        except importlib.metadata.PackageNotFoundError:
            todo.pop()
            continue
        seen.add(normalized(todo.pop()))
        todo += [n for r in requires if "extra ==" not in r
                 for n in [re.match(r"[A-Za-z0-9._-]+", r).group()] if normalized(n) not in seen]
    return sorted(seen)

facts["distributions"] = sorted(normalized(d.metadata["Name"]) for d in importlib.metadata.distributions())
facts["scikit_learn_closure"] = closure("scikit-learn")
if os.environ.get("BUILD_DIGITS"):  # the examples' digits model, built as its step builds it at first start
    facts["digits"] = run(sys.executable, "-c", "import sys; from pathlib import Path; "
        "from conveyor_examples.digits import build; print(build(Path(sys.argv[1])).stat().st_size)",
        os.environ["WORK_DIR"] + "/digits.onnx")
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


def _probe_pod(pod: str, image: str, ca_size: int, ca_sha256: str, build_digits: bool) -> dict[str, Any]:
    """The operator's step pod spec, running PROBE once instead of the step server."""
    step = StepSpec.model_validate({"name": "probe", "op": "identity"})
    spec = render_step_deployment(Owner(name=pod, namespace=NAMESPACE), step, image)["spec"]["template"]["spec"]
    container = spec["containers"][0]
    for key in ("startupProbe", "readinessProbe", "livenessProbe", "ports", "args"):
        container.pop(key, None)
    container["command"] = ["python", "-c", PROBE]
    container["imagePullPolicy"] = "Never"
    container["env"] += [
        {"name": "WORK_DIR", "value": WORK_DIR},
        {"name": "HOST_CA_SIZE", "value": str(ca_size)},
        {"name": "HOST_CA_SHA256", "value": ca_sha256},
        {"name": "MODULES", "value": " ".join(EXAMPLES_ONLY_MODULES)},
        *([{"name": "BUILD_DIGITS", "value": "1"}] if build_digits else []),
    ]
    spec["restartPolicy"] = "Never"
    spec["terminationGracePeriodSeconds"] = 1
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": NAMESPACE}, "spec": spec}


def _run_probe(cluster: Cluster, pod: str, image: str, build_digits: bool = False) -> dict[str, Any]:
    """What PROBE found in a pod of `image` (built and loaded by scripts/build-image.sh)."""
    ca = HOST_CA_BUNDLE.read_bytes()
    cluster.apply(json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
    cluster.apply(json.dumps(_probe_pod(pod, image, len(ca), hashlib.sha256(ca).hexdigest(), build_digits)))
    phase = _finished_phase(cluster, pod, timeout=300.0)
    logs = cluster.kubectl("logs", pod, "-n", NAMESPACE)
    assert phase == "Succeeded", f"pod {pod} {phase}: {logs[-3000:]}"
    facts: dict[str, Any] = json.loads(logs.strip().splitlines()[-1])
    return facts


@pytest.fixture(scope="module")
def probes(cluster: Cluster) -> Iterator[dict[str, dict[str, Any]]]:
    """PROBE's findings in the production image (conveyor:dev) and in the examples image (conveyor-examples:dev)."""
    image = ensure_image(cluster)  # builds and loads both
    try:
        yield {
            "production": _run_probe(cluster, POD, image),
            "examples": _run_probe(cluster, EXAMPLES_POD, EXAMPLES_IMAGE, build_digits=True),
        }
    finally:
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


@pytest.fixture(scope="module")
def probe(probes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What PROBE found in a pod of the production image, conveyor:dev."""
    return probes["production"]


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


def _finished_phase(cluster: Cluster, pod: str, timeout: float) -> str:
    """The probe pod's phase once it has run to the end (Succeeded or Failed)."""
    deadline = time.monotonic() + timeout
    phase = ""
    while time.monotonic() < deadline:
        phase = cluster.kubectl("get", "pod", pod, "-n", NAMESPACE, "-o", "jsonpath={.status.phase}").strip()
        if phase in {"Succeeded", "Failed"}:
            return phase
        time.sleep(1)
    raise AssertionError(f"pod {pod} still {phase or 'not started'} after {timeout:.0f}s")


def _pyproject_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def test_image_has_no_scikit_learn_and_no_demo_model_builders(probe: dict[str, Any]) -> None:
    assert probe["modules"] == dict.fromkeys(EXAMPLES_ONLY_MODULES, False)
    assert "scikit-learn" not in probe["distributions"]


def test_examples_image_adds_scikit_learn_and_builds_the_digits_model_as_a_step_does(probes: dict[str, Any]) -> None:
    examples, production = probes["examples"], probes["production"]
    assert examples["modules"] == dict.fromkeys(EXAMPLES_ONLY_MODULES, True)
    # Exactly scikit-learn and what it needs that the production image lacks (scipy, joblib, ...); the project itself
    # is the production image's install.
    added = set(examples["distributions"]) - set(production["distributions"])
    assert added == set(examples["scikit_learn_closure"]) - set(production["distributions"])
    assert {"scikit-learn", "scipy"} <= added
    assert examples["digits"]["rc"] == 0, examples["digits"]
    assert int(examples["digits"]["out"].splitlines()[-1]) > 0
    assert (examples["uid"], examples["writable"]["/probe"]) == (RUN_AS_USER, "EROFS")
