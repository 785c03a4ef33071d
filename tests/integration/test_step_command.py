"""`conveyor step` argument handling: the spec from a manifest (paths relative to it) or from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor_runtime.cli import build_parser
from conveyor_runtime.cli.step import load_step_spec
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
