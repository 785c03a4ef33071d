"""`conveyor bench pipeline` end to end: it starts one pipeline per variant, loads each with a closed and an open loop
over real gRPC, prints a table per variant with numbers in it, and stops what it started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conveyor_benchmarks.peers.process_tree import descendants
from conveyor_runtime.cli.main import main

MANIFEST = Path(__file__).resolve().parents[2] / "examples" / "digits" / "pipeline.yaml"


@pytest.mark.parametrize(
    ("flag", "variants", "described"),
    [
        ("--threading", ("adaptive", "fixed"), "{} threads"),
        ("--event-loops", ("uvloop", "asyncio"), "{} event loop"),
        ("--step-calls", ("stream", "unary"), "{} step calls"),
    ],
)
def test_pipeline_bench_measures_every_variant_and_leaves_no_process_behind(
    flag: str, variants: tuple[str, str], described: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = set(descendants(os.getpid()))
    argv = ["bench", "pipeline", str(MANIFEST), "--concurrency", "2", "--rates", "20", "--duration", "1",
            "--warmup", "0.3", "--no-baseline", flag, ",".join(variants)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    for variant in variants:
        title = f"pipeline digits: preprocess -> classify -> postprocess, {described.format(variant)}\n"
        table = out.split(title)[1]
        rows = {" ".join(line.split()[:2]): line.split() for line in table.splitlines()[1:3]}
        assert set(rows) == {"closed C=2", "open 20/s"}, table[:400]
        for row in rows.values():
            assert float(row[2]) > 0 and row[-1] == "0", row  # req/s measured, no errors
        assert "alone %" in table and "bottleneck:" in table
    assert set(descendants(os.getpid())) <= before  # both pipelines stopped


def test_pipeline_bench_floor_loads_a_null_server_like_the_busiest_level_and_stops_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    before = set(descendants(os.getpid()))
    figures = tmp_path / "bench.json"
    argv = ["bench", "pipeline", str(MANIFEST), "--concurrency", "1,2", "--rates", "none", "--duration", "1",
            "--warmup", "0.3", "--no-baseline", "--floor", "--json", str(figures)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    floor = json.loads(figures.read_text())["floor"]
    busiest = max(json.loads(figures.read_text())["runs"][0]["levels"], key=lambda level: level["requests_per_s"])
    assert floor["concurrency"] == int(busiest["level"].removeprefix("C="))
    assert floor["delay_ms"] == pytest.approx(1000 * floor["concurrency"] / busiest["requests_per_s"])
    assert floor["requests_per_s"] > 0
    assert floor["server_cpu_ms_per_request"] > 0 and floor["load_generator_cpu_ms_per_request"] > 0
    assert f"protocol floor at C={floor['concurrency']}: a server that only reads each request" in out
    assert set(descendants(os.getpid())) <= before  # the pipeline and the null server stopped
