"""The layers written down in pyproject.toml hold, and a forbidden import breaks them (so CI fails on one)."""

from __future__ import annotations

import importlib
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import conveyor_operator
import conveyor_runtime

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ("runtime", "operator", "benchmarks", "examples")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter with the project's contracts on the packages under `root`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(root / d) for d in PACKAGE_DIRS)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    for directory in PACKAGE_DIRS:
        shutil.copytree(
            REPO / directory, tmp_path / directory, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.onnx")
        )
    return tmp_path


def test_layers_hold_on_the_tree() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("runtime/conveyor_runtime/step/inputs.py", "from ..gateway import Gateway", "Runtime layers"),
        ("runtime/conveyor_runtime/spec/names.py", "from ..protocol import pb", "Runtime layers"),
        ("operator/conveyor_operator/labels.py", "from conveyor_runtime.step import OpLoop", "The operator imports only"),
        ("runtime/conveyor_runtime/cli/infer.py", "from ..step import OpLoop", "`conveyor infer` imports only"),
        ("runtime/conveyor_runtime/errors.py", "import kopf", "The runtime never imports kopf"),
        ("runtime/conveyor_runtime/step/model_file.py", "from conveyor_examples import resnet", "The runtime never imports kopf"),
        ("runtime/conveyor_runtime/step/model_file.py", "import sklearn", "The runtime never imports kopf"),
        ("runtime/conveyor_runtime/gateway/servicer.py", "from . import http", "No import cycles"),
    ],
)
def test_layers_break_on_a_forbidden_import(tree_copy: Path, module: str, line: str, contract: str) -> None:
    path = tree_copy / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    result = _lint_imports(tree_copy)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout


def test_layers_public_face_lists_what_users_import() -> None:
    for name in ("Op", "OpContext", "RequestContext", "Skip", "TensorSpec", "OpError", "Client", "RequestError"):
        assert name in conveyor_runtime.__all__ and hasattr(conveyor_runtime, name)
    assert "OperatorConfig" in conveyor_operator.__all__


@pytest.mark.parametrize("package", [conveyor_runtime, conveyor_operator])
def test_layers_every_package_declares_its_public_names(package: object) -> None:
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):  # type: ignore[attr-defined]
        if not info.ispkg:
            continue
        module = importlib.import_module(info.name)
        assert isinstance(getattr(module, "__all__", None), list), f"{info.name} has no __all__"
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, f"{info.name}.__all__ names what it does not have: {missing}"
