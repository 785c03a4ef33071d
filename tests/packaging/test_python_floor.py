"""The lowest Python that pyproject.toml admits is the one CI tests, the one the linters target, and no image is older."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
#: python3 of the Ubuntu releases a CUDA base image may be built on (what `apt-get install python3` gives).
UBUNTU_PYTHON = {"20.04": (3, 8), "22.04": (3, 10), "24.04": (3, 12)}


def _floor() -> tuple[int, int]:
    match = re.fullmatch(r">=\s*3\.(\d+)", PYPROJECT["project"]["requires-python"].strip())
    assert match, f"requires-python should read '>=3.N', got {PYPROJECT['project']['requires-python']!r}"
    return 3, int(match.group(1))


def _dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert match, f"Dockerfile: no `ARG {name}=...`"
    return match.group(1)


def test_python_floor_is_the_version_the_suite_runs_on() -> None:
    # An admitted Python that no CI run exercises is how the batcher shipped broken on 3.10.
    assert sys.version_info[:2] == _floor(), (
        f"the suite runs on Python {sys.version_info[0]}.{sys.version_info[1]} but requires-python admits "
        f"{'.'.join(map(str, _floor()))}: run CI on the floor, or raise requires-python to what CI runs"
    )


def test_python_floor_is_what_ruff_and_mypy_target() -> None:
    major, minor = _floor()
    assert PYPROJECT["tool"]["ruff"]["target-version"] == f"py{major}{minor}"
    assert PYPROJECT["tool"]["mypy"]["python_version"] == f"{major}.{minor}"


def test_python_floor_is_met_by_the_cpu_image() -> None:
    base = _dockerfile_arg("CPU_BASE")
    match = re.fullmatch(r"python:3\.(\d+)[-\w.]*", base)
    assert match, f"CPU_BASE should be an official python:3.N image, got {base!r}"
    assert (3, int(match.group(1))) >= _floor(), f"CPU_BASE {base} is older than requires-python"


def test_python_floor_is_met_by_the_gpu_image() -> None:
    base = _dockerfile_arg("GPU_BASE")
    match = re.fullmatch(r"nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu(\d+\.\d+)", base)
    assert match, f"GPU_BASE should be an nvidia/cuda:X-cudnn-runtime-ubuntuNN.NN image, got {base!r}"
    ubuntu = match.group(1)
    assert ubuntu in UBUNTU_PYTHON, f"GPU_BASE is on Ubuntu {ubuntu}: add its python3 version to UBUNTU_PYTHON"
    assert UBUNTU_PYTHON[ubuntu] >= _floor(), (
        f"GPU_BASE {base}: Ubuntu {ubuntu}'s python3 is {UBUNTU_PYTHON[ubuntu]}, older than requires-python"
    )
