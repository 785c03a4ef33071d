"""`conveyor fetch` as a process: a pod's init container (spec from the env, reason in the termination log) and the
manifest pre-warm, against a real S3 server."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conveyor_runtime.sources import cached_path
from conveyor_runtime.spec import StepSpec, step_to_env
from tests.support.s3_server import S3Server, s3_server

MODEL = b"onnx bytes" * 1000
LABELS = b"cat\ndog\n"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server(buckets=["models"]) as server:
        server.upload("models/classify/model.onnx", MODEL)
        server.upload("models/classify/labels.txt", LABELS)
        yield server


def fetch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor_runtime.cli", "fetch", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_fetch_command_in_a_pod_fetches_the_model_and_the_config_files(s3: S3Server, tmp_path: Path) -> None:
    digest = hashlib.sha256(MODEL).hexdigest()
    model_step = StepSpec.model_validate({"name": "classify", "model": {"uri": "s3://models/classify/model.onnx", "sha256": digest}})
    op_step = StepSpec.model_validate(
        {"name": "labels", "op": "topk", "config": {"k": 1, "labels": "s3://models/classify/labels.txt"}}
    )
    for step in (model_step, op_step):
        done = fetch({**s3.env(), **step_to_env(step), "CONVEYOR_MODEL_CACHE": str(tmp_path)})
        assert done.returncode == 0, done.stderr
    assert cached_path("s3://models/classify/model.onnx", digest, tmp_path).read_bytes() == MODEL
    assert cached_path("s3://models/classify/labels.txt", None, tmp_path).read_bytes() == LABELS
    assert "fetched s3://models/classify/model.onnx" in done.stderr or "fetched s3://models/classify/labels.txt" in done.stderr


def test_fetch_command_in_a_pod_writes_why_it_failed_to_the_termination_log(s3: S3Server, tmp_path: Path) -> None:
    step = StepSpec.model_validate({"name": "classify", "model": {"uri": "s3://models/classify/missing.onnx"}})
    log = tmp_path / "termination-log"
    done = fetch(
        {**s3.env(), **step_to_env(step), "CONVEYOR_MODEL_CACHE": str(tmp_path / "cache")},
        "--termination-log",
        str(log),
        "--attempts",
        "1",
    )
    assert done.returncode == 1
    message = "FetchError: step classify: s3://models/classify/missing.onnx: 404 NoSuchKey"
    assert log.read_text() == message
    assert message in done.stderr


def test_fetch_command_wrong_credentials_name_the_step_and_the_403(s3: S3Server, tmp_path: Path) -> None:
    step = StepSpec.model_validate({"name": "classify", "model": {"uri": "s3://models/classify/model.onnx"}})
    log = tmp_path / "termination-log"
    env = {**s3.env(AWS_SECRET_ACCESS_KEY="wrong"), **step_to_env(step), "CONVEYOR_MODEL_CACHE": str(tmp_path / "c")}
    done = fetch(env, "--termination-log", str(log))
    assert done.returncode == 1
    assert log.read_text() == "FetchError: step classify: s3://models/classify/model.onnx: 403 SignatureDoesNotMatch"


def test_fetch_command_prewarms_every_step_of_a_manifest(s3: S3Server, tmp_path: Path) -> None:
    manifest = tmp_path / "pipeline.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "conveyor.dev/v1alpha1",
                "kind": "InferencePipeline",
                "metadata": {"name": "p"},
                "spec": {
                    "steps": [
                        {"name": "classify", "model": {"uri": "s3://models/classify/model.onnx"}},
                        {"name": "top", "op": "topk", "config": {"labels": "s3://models/classify/labels.txt"}},
                    ]
                },
            }
        )
    )
    cache = tmp_path / "cache"
    done = fetch({**s3.env(), "CONVEYOR_MODEL_CACHE": str(cache)}, str(manifest))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == ["labels.txt", "model.onnx"]
    assert "2 file(s) in the model cache" in done.stderr
