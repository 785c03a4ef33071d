"""A step that cannot start says why in its termination message (what Kubernetes shows as the container's error)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor_runtime.spec import STEP_SPEC_ENV
from conveyor_runtime.step import TERMINATION_MESSAGE_LIMIT, termination_message

CASES = {
    "unknown-op": ('{"name": "enc", "op": "nosuch"}', "InvalidManifest: 1 invalid field(s):\n  step.op: must be a built-in op"),
    "missing-model": ('{"name": "m", "model": {"path": "absent.onnx"}}', "ModelLoadError: model file "),
    "bad-config": ('{"name": "top", "op": "topk", "config": {"k": "x"}}', "ModelLoadError: step 'top': op 'topk': config.k"),
    "unreadable-model": ('{"name": "m", "model": {"path": "broken.onnx"}}', "ModelLoadError: ONNX Runtime cannot load the model"),
    "bad-env": ("not json", f"InvalidManifest: 1 invalid field(s):\n  {STEP_SPEC_ENV}: not valid JSON"),
}


def _step(tmp_path: Path, spec: str, *flags: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    command = [sys.executable, "-m", "conveyor_runtime.cli", "step", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"]
    env = {**os.environ, STEP_SPEC_ENV: spec}
    return subprocess.run([*command, *flags], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


@pytest.mark.parametrize("case", list(CASES))
def test_step_that_cannot_start_writes_its_error_to_the_termination_log(tmp_path: Path, case: str) -> None:
    spec, expected = CASES[case]
    log = tmp_path / "termination-log"
    log.touch()  # the kubelet makes the file; the step only writes it
    result = _step(tmp_path, spec, "--termination-log", str(log))
    assert result.returncode == 1, result.stderr
    message = log.read_text()
    assert message.startswith(expected), message
    assert message in result.stderr  # the same words as the log's last lines


def test_step_without_a_termination_log_writes_none(tmp_path: Path) -> None:
    result = _step(tmp_path, CASES["unknown-op"][0])
    assert result.returncode == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx"]


def test_termination_message_is_clipped_to_what_the_kubelet_keeps() -> None:
    message = termination_message(ValueError("é" * 5000))
    assert len(message.encode()) <= TERMINATION_MESSAGE_LIMIT
    assert message.startswith("ValueError: éé") and message.endswith("...")
    assert termination_message(ValueError("short")) == "ValueError: short"
