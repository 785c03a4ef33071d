"""`conveyor bench peers`: arguments, how the manifest maps onto each peer, answer checks and the printed table."""

from __future__ import annotations

import argparse
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from conveyor_benchmarks.load import LoadResult
from conveyor_benchmarks.peers import Measurement, compare_answers, parse_levels, parse_systems, peer_plan, render_table
from conveyor_benchmarks.peers.peers_bench import open_rates, parse_rates, ratio_lines, register, turn_order
from conveyor_benchmarks.peers.process_tree import descendants, parse_ppid
from conveyor_benchmarks.peers.pytriton_app import stub_library_path, triton_models
from conveyor_benchmarks.peers.ray_serve import ray_layout
from conveyor_benchmarks.peers.wire import decode_body, encode_body

MANIFEST = Path(__file__).resolve().parents[2] / "benchmarks" / "manifests" / "resnet18-float32.yaml"


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="mode"))
    return parser.parse_args(["peers", *argv])


def test_peers_arguments_default_to_the_three_systems_at_1_and_32_clients() -> None:
    args = _parse(str(MANIFEST))
    assert parse_systems(args.systems) == ["conveyor", "ray", "pytriton"]
    assert parse_levels(args.concurrency) == [1, 32]
    assert (args.duration, args.warmup, args.payload, args.rows) == (10.0, 2.0, "auto", 1)
    assert args.others == "running"  # pausing them lengthened Ray's tail in its next turn (README)
    assert _parse(str(MANIFEST), "--others", "paused").others == "paused"


@pytest.mark.parametrize(
    ("systems", "message"),
    [("conveyor,triton", "got 'triton'"), ("ray,ray", "name each system once"), ("", "name each system once")],
)
def test_peers_parse_systems_rejects_unknown_and_repeated_names(systems: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        parse_systems(systems)


@pytest.mark.parametrize("levels", ["0,32", "one", ""])
def test_peers_parse_levels_rejects_anything_but_positive_counts(levels: str) -> None:
    with pytest.raises(SystemExit, match="--concurrency"):
        parse_levels(levels)


def test_peers_turn_order_alternates_direction_per_level() -> None:
    names = ["conveyor", "ray", "pytriton"]
    assert [turn_order(names, i) for i in range(3)] == [names, names[::-1], names]


def test_peers_plan_maps_the_resnet_manifest_to_batch_8_delay_10ms_and_two_single_threaded_instances() -> None:
    plan = peer_plan(MANIFEST, cpus=2)
    assert (plan.preprocess.op, plan.postprocess.op) == (
        "conveyor_runtime.ops.vision:Preprocess",
        "conveyor_runtime.ops.vision:TopK",
    )
    assert plan.preprocess.config["size"] == 224 and plan.postprocess.config["k"] == 3
    assert (plan.max_batch, plan.queue_delay_s, plan.instances, plan.intra_threads) == (8, 0.01, 2, 1)
    assert (plan.preprocess.replicas, plan.postprocess.replicas) == (2, 1)
    replica = plan.replica_model()
    assert (replica.instances, replica.intraOpThreads, replica.build) == (1, 1, "conveyor_examples.resnet:build")
    assert plan.classify.model is not None and replica.path == plan.classify.model.path


def test_peers_plan_gives_each_instance_its_share_of_the_cpus_as_conveyor_does() -> None:
    assert peer_plan(MANIFEST, cpus=4).intra_threads == 2
    assert peer_plan(MANIFEST, cpus=1).intra_threads == 1


def test_peers_plan_refuses_a_pipeline_that_is_not_op_model_op(tmp_path: Path) -> None:
    text = MANIFEST.read_text().split("  - name: postprocess")[0]
    path = tmp_path / "two-steps.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="chain of three steps"):
        peer_plan(path, cpus=2)


def test_peers_ray_layout_fits_every_replica_on_the_cpus_and_lets_batches_fill() -> None:
    layout = ray_layout(peer_plan(MANIFEST, cpus=2), cpus=2, max_clients=32)
    replicas = layout.pipeline_replicas + layout.classifier_replicas + layout.topk_replicas
    assert (layout.pipeline_replicas, layout.classifier_replicas, layout.topk_replicas) == (2, 2, 1)
    assert layout.replica_cpus * replicas == pytest.approx(2.0)
    assert (layout.max_batch, layout.batch_wait_s) == (8, 0.01)
    assert layout.classifier_ongoing >= layout.max_batch
    assert layout.pipeline_ongoing * layout.pipeline_replicas >= 32


def test_peers_triton_models_batch_only_the_classifier() -> None:
    models = triton_models(peer_plan(MANIFEST, cpus=2))
    assert [(m.name, m.instances, m.max_batch, m.queue_delay_us) for m in models] == [
        ("preprocess", 2, 0, 0),
        ("classify", 2, 8, 10_000),
        ("postprocess", 1, 0, 0),
    ]


def test_peers_stub_library_path_puts_this_interpreters_libpython_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    library = tmp_path / f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    library.touch()
    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: str(tmp_path) if name == "LIBDIR" else None)
    assert stub_library_path({"LD_LIBRARY_PATH": "/opt/x"})["LD_LIBRARY_PATH"] == f"{tmp_path}:/opt/x"
    assert stub_library_path({})["LD_LIBRARY_PATH"] == str(tmp_path)
    library.unlink()
    assert stub_library_path({"LD_LIBRARY_PATH": "/opt/x"})["LD_LIBRARY_PATH"] == "/opt/x"


def test_peers_wire_round_trips_images_and_pixels() -> None:
    images = np.empty(2, dtype=object)
    images[:] = [b"\xff\xd8jpeg\x00", b""]
    body, kind = encode_body(images)
    back = decode_body(body, kind)
    assert back.dtype == np.object_ and list(back) == list(images)
    pixels = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    assert np.array_equal(decode_body(*encode_body(pixels)), pixels)


def test_peers_wire_names_what_is_wrong_with_a_bad_body() -> None:
    with pytest.raises(ValueError, match="claims 9 bytes"):
        decode_body(b"\x09\x00\x00\x00abc", "application/x-conveyor-images")
    with pytest.raises(ValueError, match="content type"):
        decode_body(b"", "text/plain")


def test_peers_compare_answers_names_each_request_that_differs() -> None:
    same = [[["ok", "dent", "crack"]]]
    assert compare_answers({"conveyor": same, "ray": same}) == []
    problems = compare_answers({"conveyor": same, "ray": same, "pytriton": [[["dent", "ok", "crack"]]]})
    assert problems == ["request 0: pytriton answered [['dent', 'ok', 'crack']], conveyor answered [['ok', 'dent', 'crack']]"]


def test_peers_parse_ppid_survives_spaces_and_parentheses_in_the_name() -> None:
    assert parse_ppid("42 (ray::Serve (x) y) S 7 42 42 0 -1") == 7


def test_peers_descendants_walks_the_whole_tree(tmp_path: Path) -> None:
    for pid, ppid in [(1, 0), (10, 1), (11, 10), (12, 11), (20, 1)]:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (p) S {ppid} 0 0")
    assert sorted(descendants(10, tmp_path)) == [10, 11, 12]


def _measurement(system: str, level: str, requests: int, latency_s: float, cpu_s: float) -> Measurement:
    result = LoadResult("closed", level, 10.0, 1, latencies=[latency_s] * requests)
    return Measurement(system, result, cpu_s=cpu_s, others_cpu_s=1.2, client_cpu_s=0.5, elapsed_s=12.0)


def test_peers_table_has_a_row_per_system_and_level_sorted_by_level() -> None:
    measured = [
        _measurement("conveyor", "C=1", 100, 0.010, 3.0),
        _measurement("ray", "C=1", 80, 0.012, 4.8),
        _measurement("ray", "C=32", 300, 0.100, 9.0),
        _measurement("conveyor", "C=32", 400, 0.080, 12.0),
    ]
    lines = render_table(measured).splitlines()
    assert lines[0].split()[:5] == ["system", "load", "req/s", "p50", "ms"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["conveyor", "C=1"],
        ["ray", "C=1"],
        ["conveyor", "C=32"],
        ["ray", "C=32"],
    ]
    # conveyor at C=1: 10 req/s over a 12 s level is 120 requests; 3.0 CPU s / 120 = 25 ms per request
    assert lines[1].split()[2:6] == ["10.0", "10.0", "10.0", "25.00"]
    assert lines[1].split()[7] == "10"  # idle others: 1.2 s of CPU over 12 s


def test_peers_ratio_lines_compare_conveyor_with_the_fastest_peer_per_level() -> None:
    measured = [
        _measurement("conveyor", "C=32", 400, 0.080, 12.0),
        _measurement("ray", "C=32", 300, 0.100, 9.0),
        _measurement("pytriton", "C=32", 200, 0.150, 9.0),
    ]
    assert ratio_lines(measured) == [
        "C=32: conveyor / best peer (ray): throughput 1.33x, p50 0.80x, p99 0.80x, serving CPU/request 1.00x"
    ]


def test_peers_parse_rates_reads_numbers_or_auto_and_rejects_the_rest() -> None:
    assert parse_rates("10, 20.5") == [10.0, 20.5]
    assert parse_rates("auto") is None
    for bad in ("fast", "10,-1", "0"):
        with pytest.raises(SystemExit, match="--rates"):
            parse_rates(bad)


def test_peers_auto_rates_are_shares_of_the_slowest_systems_best_closed_loop() -> None:
    measured = [
        _measurement("conveyor", "C=1", 100, 0.010, 3.0),  # 10 req/s
        _measurement("conveyor", "C=32", 400, 0.080, 12.0),  # 40 req/s
        _measurement("ray", "C=1", 80, 0.012, 4.8),
        _measurement("ray", "C=32", 200, 0.100, 9.0),  # 20 req/s: ray's best, the slowest system's best
    ]
    assert open_rates(measured) == [10.0, 16.0]


def _open(system: str, rate: str, p99_s: float) -> Measurement:
    result = LoadResult("open", rate, 10.0, 1, latencies=[p99_s] * 100)
    return Measurement(system, result, cpu_s=5.0, others_cpu_s=0.0, client_cpu_s=0.5, elapsed_s=12.0)


def test_peers_open_loop_levels_sort_after_closed_ones_and_compare_p99_with_each_peer() -> None:
    measured = [
        _open("ray", "16/s", 0.400),
        _open("conveyor", "16/s", 0.100),
        _open("pytriton", "16/s", 0.250),
        _measurement("conveyor", "C=32", 400, 0.080, 12.0),
        _measurement("ray", "C=32", 300, 0.100, 9.0),
    ]
    # by level (closed loops first), then systems in the order first measured
    assert [line.split()[:2] for line in render_table(measured).splitlines()[1:]] == [
        ["ray", "C=32"],
        ["conveyor", "C=32"],
        ["ray", "16/s"],
        ["conveyor", "16/s"],
        ["pytriton", "16/s"],
    ]
    lines = ratio_lines(measured)
    assert lines[0].startswith("16/s: conveyor / best peer (pytriton):"), lines  # same rate: best = lowest p99
    assert "p99 0.40x" in lines[0]
    assert lines[1] == "16/s: conveyor p99 / each peer's p99: ray 0.25x, pytriton 0.40x"
