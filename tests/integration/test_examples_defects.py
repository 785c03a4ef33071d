"""The defect-detection example (its ResNet-18 sibling) under `conveyor run`: camera frames as PNG bytes, end to end."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conveyor_runtime.client import Client, image_tensor
from tests.support.pipeline_fixtures import REPO, RunProcess, start_run

EXAMPLE = REPO / "examples" / "defect-detection"
LABELS = {"ok", "scratch", "dent", "crack", "stain", "misalignment"}


def _frames(count: int, seed: int = 0) -> list[bytes]:
    """Synthetic camera frames (320x240 RGB) as PNG files."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(buffer, format="PNG")
        frames.append(buffer.getvalue())
    return frames


@pytest.fixture(scope="module")
def defects_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunProcess]:
    run = start_run(EXAMPLE / "pipeline-resnet18.yaml", tmp_path_factory.mktemp("defects"), timeout=400)
    try:
        yield run
    finally:
        assert run.stop() == 0, run.log()


def test_examples_defects_run_table_lists_every_step(defects_run: RunProcess) -> None:
    log = defects_run.log()
    assert "preprocess   2/2" in log and "classify     1/1" in log and "postprocess  1/1" in log, log[-2000:]
    assert len(defects_run.addresses["steps"]["preprocess"]) == 2


def test_examples_defects_over_tritonclient_grpc_and_http(defects_run: RunProcess) -> None:
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp

    frames = image_tensor(_frames(3))
    grpc_client = tgrpc.InferenceServerClient(defects_run.grpc)
    http_client = thttp.InferenceServerClient(defects_run.http)
    try:
        g_input = tgrpc.InferInput("image", [3], "BYTES")
        g_input.set_data_from_numpy(frames)
        g_result = grpc_client.infer("defects", [g_input], client_timeout=120)
        h_input = thttp.InferInput("image", [3], "BYTES")
        h_input.set_data_from_numpy(frames, binary_data=True)
        h_result = http_client.infer("defects", [h_input])
    finally:
        grpc_client.close()
        http_client.close()
    for result in (g_result, h_result):
        labels = result.as_numpy("labels")
        scores = result.as_numpy("scores")
        assert labels.shape == (3, 3) and scores.shape == (3, 3)
        assert {x.decode() for x in labels.reshape(-1)} <= LABELS
        assert np.all(np.diff(scores, axis=1) <= 0), "scores come best first"
    np.testing.assert_allclose(g_result.as_numpy("scores"), h_result.as_numpy("scores"), rtol=1e-5)


def test_examples_defects_conveyor_infer_prints_labels(defects_run: RunProcess, tmp_path: Path) -> None:
    (tmp_path / "frame.png").write_bytes(_frames(1, seed=5)[0])
    result = subprocess.run(
        [sys.executable, "-m", "conveyor_runtime.cli", "infer", str(tmp_path / "frame.png"), "--url", defects_run.grpc, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    outputs = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(outputs["labels"][0]) <= LABELS and len(outputs["scores"][0]) == 3


def test_examples_defects_python_client_names_the_failing_step(defects_run: RunProcess) -> None:
    with Client(defects_run.grpc) as client:
        assert client.ready()
        with pytest.raises(Exception) as info:
            client.infer({"image": image_tensor([b"not an image"])})
    assert "step 'preprocess'" in str(info.value) and "IMAGE_DECODE" in str(info.value)
