"""`conveyor bench peers` end to end: Conveyor, Ray Serve and PyTriton started on the ResNet-18 manifest, checked to
answer alike, loaded briefly and stopped with nothing left running (needs the `peers` extra; skipped without it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("pytriton")

from conveyor_benchmarks.peers.process_tree import descendants
from conveyor_runtime.cli.main import main

MANIFEST = Path(__file__).resolve().parents[2] / "benchmarks" / "manifests" / "resnet18-float32.yaml"


def test_peers_bench_runs_every_system_and_leaves_no_process_behind(capsys: pytest.CaptureFixture[str]) -> None:
    before = set(descendants(os.getpid()))
    argv = ["bench", "peers", str(MANIFEST), "--concurrency", "2", "--duration", "1", "--warmup", "0.5", "--check", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "agree across conveyor, ray, pytriton" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["conveyor"], ["ray"], ["pytriton"])]
    rows = [r for r in rows if len(r) >= 9 and r[1] == "C=2"]
    assert sorted(r[0] for r in rows) == ["conveyor", "pytriton", "ray"]
    assert all(r[8] == "0" for r in rows), rows  # no errors
    assert set(descendants(os.getpid())) <= before  # every server and what it started is gone
