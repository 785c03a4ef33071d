"""`conveyor bench pipeline --policies`: the manifest each policy runs, and the in-process layouts it is held to."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor_benchmarks.in_process import layouts_for
from conveyor_benchmarks.pipeline_bench import variant_manifest, variant_run_args
from conveyor_runtime.spec import load_manifest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "defect-detection" / "pipeline-resnet18.yaml"


def test_bench_variant_manifest_sets_the_policy_of_model_steps_only_and_sits_beside_the_original(tmp_path: Path) -> None:
    original = tmp_path / "pipeline.yaml"
    original.write_text(EXAMPLE.read_text())
    path = variant_manifest(original, "fill")
    assert path.parent == original.parent  # relative model paths resolve as in the original
    steps = load_manifest(path).spec.steps
    before = load_manifest(original).spec.steps
    assert [s.batching.policy for s in steps] == ["workConserving", "fill", "workConserving"]
    assert steps[1].batching.model_copy(update={"policy": "workConserving"}) == before[1].batching
    assert [s.model_dump(exclude={"batching"}) for s in steps] == [s.model_dump(exclude={"batching"}) for s in before]


def test_bench_in_process_layouts_give_one_thread_per_core_except_sequential() -> None:
    layouts = layouts_for(2)
    assert [(x.name, x.threads, x.intra) for x in layouts] == [("sequential", 1, 2), ("parallel", 2, 1), ("pipelined", 2, 1)]
    assert [x.name for x in layouts_for(1)] == ["sequential", "pipelined"]


def test_bench_variant_manifest_sets_the_data_path_and_leaves_the_steps_alone(tmp_path: Path) -> None:
    original = tmp_path / "pipeline.yaml"
    original.write_text(EXAMPLE.read_text())
    path = variant_manifest(original, "gateway")
    changed, before = load_manifest(path).spec, load_manifest(original).spec
    assert before.gateway.dataPath == "stepToStep" and changed.gateway.dataPath == "gateway"
    assert changed.steps == before.steps
    assert changed.gateway.model_copy(update={"dataPath": "stepToStep"}) == before.gateway


def test_bench_in_process_placement_puts_each_op_step_in_a_neighbouring_model_steps_process(tmp_path: Path) -> None:
    original = tmp_path / "pipeline.yaml"
    original.write_text((EXAMPLE.parent.parents[1] / "benchmarks" / "manifests" / "resnet18-float32.yaml").read_text())
    steps = load_manifest(variant_manifest(original, "inProcess")).spec.steps
    assert [s.inProcessWith for s in steps] == ["classify", None, "classify"]
    assert "replicas" not in steps[0].model_fields_set, "a step in another's process has no replicas of its own"
    separate = load_manifest(variant_manifest(original, "processPerStep")).spec.steps
    assert [s.inProcessWith for s in separate] == [None, None, None]
    assert separate == load_manifest(original).spec.steps
    assert load_manifest(variant_manifest(original, "inProcessEmbedded")).spec.steps == steps


def test_bench_gateway_variants_say_where_conveyor_run_serves_the_gateway() -> None:
    assert variant_run_args("inProcessEmbedded") == ["--gateway", "embedded"]
    assert variant_run_args("inProcess") == ["--gateway", "separate"]
    assert [variant_run_args(v) for v in ("separate", "embedded")] == [["--gateway", "separate"], ["--gateway", "embedded"]]
    assert [variant_run_args(v) for v in ("processPerStep", "fill", "uvloop", "")] == [[], [], [], []]


def test_bench_threading_variants_set_adaptive_threads_of_model_steps_only(tmp_path: Path) -> None:
    original = tmp_path / "pipeline.yaml"
    original.write_text(EXAMPLE.read_text())
    before = load_manifest(original).spec.steps
    for variant, adaptive in (("fixed", False), ("adaptive", True)):
        steps = load_manifest(variant_manifest(original, variant)).spec.steps
        assert [s.model.adaptiveThreads if s.model else None for s in steps] == [None, adaptive, None]
        assert [s.model_dump(exclude={"model"}) for s in steps] == [s.model_dump(exclude={"model"}) for s in before]


def test_bench_event_loop_variants_run_the_manifest_as_it_is(tmp_path: Path) -> None:
    original = tmp_path / "pipeline.yaml"
    original.write_text(EXAMPLE.read_text())
    for variant in ("uvloop", "asyncio"):  # the variant is the processes' $CONVEYOR_EVENT_LOOP, not the manifest
        assert load_manifest(variant_manifest(original, variant)) == load_manifest(original)


def test_bench_step_stats_count_busy_in_instance_seconds_and_the_share_of_batches_run_alone() -> None:
    from conveyor_benchmarks.pipeline_bench import step_stats

    before = [{}, {}]
    after = [  # two replicas over 10 s: 4 batches each, one of them alone (1 s holding both instances)
        {"conveyor_step_batch_size_count{}": 4, "conveyor_step_batch_size_sum{}": 16,
         "conveyor_step_compute_seconds_count{}": 4, "conveyor_step_compute_seconds_sum{}": 4.0,
         "conveyor_step_busy_seconds_total{}": 5.0, "conveyor_step_alone_batches_total{}": 1},
        {"conveyor_step_batch_size_count{}": 4, "conveyor_step_batch_size_sum{}": 16,
         "conveyor_step_compute_seconds_count{}": 4, "conveyor_step_compute_seconds_sum{}": 4.0},
    ]  # fmt: skip
    stats = step_stats("classify", before, after, 10.0)
    assert stats.busy == (5.0 + 4.0) / 20  # the second replica predates the counter: its compute time
    assert stats.alone == 1 / 8
    assert stats.compute_ms == 1000.0 and stats.mean_batch == 4


def test_bench_in_process_sequential_layout_spins_its_model_threads_as_a_lone_batch_session_does(tmp_path: Path) -> None:
    # The baseline gets what a step's lone-batch session gets: a multi-threaded session that spins while it runs.
    from conveyor_benchmarks.in_process import Layout, _Steps
    from tests.support.step_fixtures import ModelFiles

    model = ModelFiles(tmp_path).resnet(32)
    manifest = tmp_path / "pipeline.yaml"
    manifest.write_text(
        "apiVersion: conveyor.dev/v1alpha1\nkind: InferencePipeline\nmetadata: {name: p}\n"
        f"spec:\n  steps:\n  - name: classify\n    model: {{path: {model}}}\n"
    )

    def spinning(layout: Layout) -> str:
        op = _Steps(manifest, layout).ops["classify"]
        session = op.session._sessions.get()  # type: ignore[attr-defined]
        return str(session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning"))

    assert spinning(Layout("sequential", 1, 2)) == "1"
    assert spinning(Layout("parallel", 2, 1)) == "0"


def test_bench_in_process_baseline_loads_its_ops_without_the_runtimes_info_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # It loads them again next to every load level; the session lines would cut the bench's progress apart.
    import logging

    from conveyor_benchmarks.in_process import Layout, _Steps
    from tests.support.step_fixtures import ModelFiles

    model = ModelFiles(tmp_path).resnet(32)
    manifest = tmp_path / "pipeline.yaml"
    manifest.write_text(
        "apiVersion: conveyor.dev/v1alpha1\nkind: InferencePipeline\nmetadata: {name: p}\n"
        f"spec:\n  steps:\n  - name: classify\n    model: {{path: {model}}}\n"
    )
    runtime = logging.getLogger("conveyor_runtime")
    with caplog.at_level(logging.INFO):
        level = runtime.level
        _Steps(manifest, Layout("parallel", 2, 1)).close()
        assert runtime.level == level
        logging.getLogger("conveyor_runtime.step.session").info("after the baseline")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("conveyor_runtime")] == ["after the baseline"]
