"""`conveyor run` on a manifest whose model lives in a real S3 server: the same answers as from a path, and a second
start reads the model cache (the server is gone by then)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from conveyor_runtime.sources import CACHE_ENV, cached_path
from tests.support.pipeline_fixtures import RunProcess, start_run
from tests.support.s3_server import s3_server
from tests.support.step_fixtures import ModelFiles, model_files  # noqa: F401 - fixture


def _manifest(path: Path, model: dict[str, Any]) -> Path:
    document = {
        "apiVersion": "conveyor.dev/v1alpha1",
        "kind": "InferencePipeline",
        "metadata": {"name": "classify"},
        "spec": {"steps": [{"name": "classify", "model": model, "batching": {"maxBatchSize": 4}}]},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document))
    return path


def _answers(manifest: Path, tmp_path: Path, images: np.ndarray) -> tuple[np.ndarray, str]:
    import tritonclient.grpc as tgrpc

    tmp_path.mkdir(parents=True, exist_ok=True)
    run: RunProcess = start_run(manifest, tmp_path)
    try:
        client = tgrpc.InferenceServerClient(run.grpc)
        try:
            tensor = tgrpc.InferInput("image", list(images.shape), "FP32")
            tensor.set_data_from_numpy(images)
            logits = client.infer("classify", [tensor], client_timeout=120).as_numpy("logits")
        finally:
            client.close()
    finally:
        assert run.stop() == 0, run.log()
    assert logits is not None
    return logits, run.log()


def test_run_model_from_s3_answers_as_from_a_path_and_a_second_start_does_not_download(
    model_files: ModelFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = model_files.resnet(image_size=32)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    images = np.random.default_rng(7).random((3, 3, 32, 32), dtype=np.float32)
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))

    from_path, _ = _answers(_manifest(tmp_path / "path" / "pipeline.yaml", {"path": str(model)}), tmp_path / "path", images)

    with s3_server(buckets=["models"]) as s3:
        uri = s3.upload("models/classify/resnet.onnx", model)
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        s3_manifest = _manifest(tmp_path / "s3" / "pipeline.yaml", {"uri": uri, "sha256": digest})
        from_s3, first_log = _answers(s3_manifest, tmp_path / "s3-first", images)
    assert not s3.running
    np.testing.assert_array_equal(from_s3, from_path)
    fetched = cached_path(uri, digest, cache)
    assert fetched.read_bytes() == model.read_bytes()
    assert f"fetching model for step classify: {uri} ..." in first_log and f"fetched {uri}: " in first_log

    again, second_log = _answers(s3_manifest, tmp_path / "s3-second", images)
    np.testing.assert_array_equal(again, from_path)
    assert "fetching model" not in second_log and f"fetched {uri}" not in second_log
