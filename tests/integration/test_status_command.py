"""`conveyor status`: the per-step live table of a pipeline that `conveyor run` started, read from its replicas'
metrics (here: a real step server under load, listed in an addresses file as `conveyor run --addresses-json` writes)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from conveyor_runtime.cli import status
from conveyor_runtime.errors import UsageError
from conveyor_runtime.protocol import InferenceStub, encode_tensors, pb
from tests.support.step_fixtures import running_step, step_spec


def main(argv: list[str]) -> int:
    """`conveyor ARGV` with the status plugin registered directly (the venv's entry points may predate it)."""
    parser = argparse.ArgumentParser(prog="conveyor")
    status.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


STEP = {"name": "double", "op": "tests.support.step_fixtures:DoubleOp", "batching": {"maxBatchSize": 4}}


async def _load(port: int, stop: asyncio.Event) -> int:
    answered = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = InferenceStub(channel)
        request = pb.ModelInferRequest(model_name="double")
        encode_tensors(request, [("x", np.ones((2, 2), dtype=np.float32))])
        while not stop.is_set():
            await stub.ModelInfer(request, timeout=10)
            answered += 1
    return answered


async def test_status_command_prints_each_steps_figures_from_the_replicas_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "pipeline.yaml"
    manifest.write_text(yaml.safe_dump({"apiVersion": "conveyor.dev/v1alpha1", "kind": "InferencePipeline",
                                        "metadata": {"name": "demo"}, "spec": {"steps": [STEP]}}))  # fmt: skip
    async with running_step(step_spec(**STEP), metrics_port=0) as server:
        addresses = tmp_path / "addresses.json"
        addresses.write_text(json.dumps({"pipeline": "demo", "metrics": None,
                                         "steps": {"double": [{"address": f"127.0.0.1:{server.port}",
                                                               "metrics": f"127.0.0.1:{server.metrics_port}"}]}}))  # fmt: skip
        stop = asyncio.Event()
        load = asyncio.create_task(_load(server.port, stop))
        try:
            code = await asyncio.to_thread(main, ["status", str(manifest), "--addresses", str(addresses), "--window", "1"])
        finally:
            stop.set()
            answered = await load

    out = capsys.readouterr().out.splitlines()
    assert code == 0 and answered > 0
    assert out[0].startswith("pipeline demo over ")
    header = out[1].split()
    row = dict(zip(header, out[2].split(), strict=True))
    assert row["STEP"] == "double" and row["PODS"] == "1"
    assert float(row["OUT/s"]) > 0 and row["BATCH"] != "-"
    assert out[-1].startswith("bottleneck: double: ")


def test_status_command_names_the_addresses_file_it_cannot_read(tmp_path: Path) -> None:
    manifest = tmp_path / "pipeline.yaml"
    manifest.write_text(yaml.safe_dump({"apiVersion": "conveyor.dev/v1alpha1", "kind": "InferencePipeline",
                                        "metadata": {"name": "demo"}, "spec": {"steps": [STEP]}}))  # fmt: skip

    with pytest.raises(UsageError, match=r"--addresses: cannot read .*absent.json.*conveyor run MANIFEST --addresses-json FILE"):
        main(["status", str(manifest), "--addresses", str(tmp_path / "absent.json")])
