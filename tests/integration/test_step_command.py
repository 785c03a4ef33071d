"""`conveyor step` argument handling: the spec from a manifest (paths relative to it) or from the environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conveyor_runtime.cli import build_parser
from conveyor_runtime.cli.step import PRE_STOP_ENV, load_step_spec, pre_stop_delay
from conveyor_runtime.errors import InvalidManifest, UsageError
from conveyor_runtime.spec import STEP_SPEC_ENV

MANIFEST = """\
apiVersion: conveyor.dev/v1alpha1
kind: InferencePipeline
metadata: {name: digits}
spec:
  steps:
    - {name: pre, op: image-preprocess, config: {size: 8, grayscale: true}}
    - name: model
      model: {path: models/digits.onnx}
      batching: {maxBatchSize: 16}
"""


def test_step_command_takes_the_step_from_a_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "pipeline.yaml"
    manifest.write_text(MANIFEST)
    spec, base_dir = load_step_spec(manifest, "model")
    assert spec.name == "model" and spec.batching.maxBatchSize == 16
    assert base_dir == tmp_path.resolve()
    with pytest.raises(UsageError, match="no step 'post'; steps: pre, model"):
        load_step_spec(manifest, "post")
    with pytest.raises(UsageError, match="name the step"):
        load_step_spec(manifest, None)


def test_step_command_reads_the_env_and_parses_its_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STEP_SPEC_ENV, '{"name": "top", "op": "topk"}')
    spec, base_dir = load_step_spec(None, None)
    assert spec.op == "topk" and base_dir is None
    args = build_parser().parse_args(["step", "--port", "9100", "--metrics-port", "0", "--grace", "3"])
    assert (args.host, args.port, args.metrics_port, args.grace) == ("0.0.0.0", 9100, 0, 3.0)
    monkeypatch.delenv(STEP_SPEC_ENV)
    with pytest.raises(InvalidManifest, match=STEP_SPEC_ENV):
        load_step_spec(None, None)


def test_step_command_pre_stop_delay_comes_from_the_flag_then_the_env_then_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    monkeypatch.delenv(PRE_STOP_ENV, raising=False)
    assert pre_stop_delay(parser.parse_args(["step"])) == 5.0
    monkeypatch.setenv(PRE_STOP_ENV, "0")
    assert pre_stop_delay(parser.parse_args(["step"])) == 0.0
    assert pre_stop_delay(parser.parse_args(["step", "--pre-stop-delay", "2.5"])) == 2.5
    monkeypatch.setenv(PRE_STOP_ENV, "soon")
    with pytest.raises(UsageError, match=f"{PRE_STOP_ENV} must be a number of seconds, got 'soon'"):
        pre_stop_delay(parser.parse_args(["step"]))


@pytest.mark.parametrize("flag", ["--pre-stop-delay", "--grace"])
def test_step_command_refuses_negative_or_unreadable_seconds(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    for value in ("-1", "nan", "later"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["step", flag, value])
        assert flag in capsys.readouterr().err


def test_step_command_refuses_batching_on_an_op_without_a_batch_step(tmp_path: Path) -> None:
    manifest = tmp_path / "pipeline.yaml"
    manifest.write_text(MANIFEST.replace("config: {size: 8, grayscale: true}}", "config: {size: 8}, batching: {maxBatchSize: 16}}"))
    command = [sys.executable, "-m", "conveyor_runtime.cli", "step", "--manifest", str(manifest), "--step", "pre"]
    command += ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)  # a step that started would hang here
    assert result.returncode == 1
    assert "spec.steps[0].batching.maxBatchSize: op 'image-preprocess' has no batch step" in result.stderr
    assert "remove it, got 16" in result.stderr
