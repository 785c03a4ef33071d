"""The committed Kubernetes schemas of `pod:` settings are what scripts/gen-pod-schemas.py makes from kubernetes-validate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conveyor_runtime.spec.pod_schemas import POD_FIELD_SCHEMAS

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_pod_schemas_module_matches_its_generator() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gen-pod-schemas.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_pod_schemas_are_structural_kubernetes_types() -> None:
    env = POD_FIELD_SCHEMAS["env"]["items"]
    assert env["required"] == ["name"] and env["properties"]["name"] == {"type": "string"}
    size_limit = POD_FIELD_SCHEMAS["volumes"]["items"]["properties"]["emptyDir"]["properties"]["sizeLimit"]
    assert size_limit == {"x-kubernetes-int-or-string": True}
    text = repr(POD_FIELD_SCHEMAS)
    assert "$ref" not in text and "'null'" not in text and "x-kubernetes-patch" not in text
