"""The local runner's pure parts: restart back-off, long output lines, and the settings `conveyor run` honours."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor_runtime.cli import build_parser, main
from conveyor_runtime.cli.run import build_runner
from conveyor_runtime.errors import InvalidManifest, UsageError
from conveyor_runtime.local import LocalRunner
from conveyor_runtime.local.output import LineCutter
from conveyor_runtime.local.replica import ReplicaProcess, RestartBackoff
from conveyor_runtime.serving import free_ports

# --- restart back-off -------------------------------------------------------------------------------------------


def _crash_after(backoff: RestartBackoff, clock: list[float], ran_s: float) -> float:
    """A replica started at clock[0] crashes `ran_s` later; returns the wait, and moves the clock past the restart."""
    started = clock[0]
    delay = backoff.delay(started_at=started, exited_at=started + ran_s)
    clock[0] = started + ran_s + delay
    return delay


def test_restart_backoff_doubles_while_a_replica_crashes_quickly() -> None:
    backoff, clock = RestartBackoff(first_s=0.5, max_s=15.0, stable_s=60.0), [1000.0]
    assert [_crash_after(backoff, clock, 1.0) for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]


def test_restart_backoff_resets_after_crashes_far_apart() -> None:
    backoff, clock = RestartBackoff(first_s=0.5, max_s=15.0, stable_s=60.0), [1000.0]
    assert [_crash_after(backoff, clock, 3600.0) for _ in range(6)] == [0.5] * 6


def test_restart_backoff_resets_once_a_replica_ran_stably_after_a_crash_loop() -> None:
    backoff, clock = RestartBackoff(first_s=0.5, max_s=15.0, stable_s=60.0), [0.0]
    loop = [_crash_after(backoff, clock, 2.0) for _ in range(7)]
    assert loop[-1] == 15.0
    assert _crash_after(backoff, clock, 59.9) == 15.0  # just short of stable: still a crash loop
    assert _crash_after(backoff, clock, 60.0) == 0.5  # ran stably: starts over
    assert _crash_after(backoff, clock, 1.0) == 1.0  # and a quick crash after that doubles from there


@pytest.mark.parametrize("settings", [{"first_s": 0.0}, {"max_s": 0.1}, {"stable_s": -1.0}])
def test_restart_backoff_rejects_unusable_settings(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(settings))):
        RestartBackoff(**settings)


# --- output lines -----------------------------------------------------------------------------------------------


def test_line_cutter_splits_chunks_into_lines_across_chunk_boundaries() -> None:
    cutter = LineCutter(max_bytes=100)
    assert cutter.feed(b"one\ntw") == ["one"]
    assert cutter.feed(b"o\r\n\nthr") == ["two", ""]
    assert cutter.feed(b"ee") == []
    assert cutter.flush() == ["three"]
    assert cutter.flush() == []


def test_line_cutter_cuts_a_long_line_and_says_how_long_it_was() -> None:
    cutter = LineCutter(max_bytes=10)
    lines = cutter.feed(b"x" * 25) + cutter.feed(b"y" * 1_000_000) + cutter.feed(b"z\nnext\n")
    assert lines == ["xxxxxxxxxx ... [line cut: 1000026 bytes, the first 10 shown]", "next"]


def test_line_cutter_keeps_at_most_max_bytes_of_an_endless_line() -> None:
    cutter = LineCutter(max_bytes=1000)
    for _ in range(1000):
        assert cutter.feed(b"a" * 65536) == []
    assert cutter.buffered <= 1000
    assert cutter.flush() == ["a" * 1000 + f" ... [line cut: {1000 * 65536} bytes, the first 1000 shown]"]


# --- settings `conveyor run` honours ----------------------------------------------------------------------------


def _write_manifest(tmp_path: Path, steps: list[dict[str, Any]], **spec: Any) -> Path:
    path = tmp_path / "pipeline.yaml"
    document = {
        "apiVersion": "conveyor.dev/v1alpha1",
        "kind": "InferencePipeline",
        "metadata": {"name": "ports"},
        "spec": {"steps": steps, **spec},
    }
    path.write_text(yaml.safe_dump(document))
    return path


def _runner(argv: list[str]) -> LocalRunner:
    return build_runner(build_parser(argv).parse_args(argv))


TWO_STEPS = [{"name": "a", "op": "identity"}, {"name": "b", "op": "identity"}]


def test_run_uses_the_manifests_gateway_ports_by_default(tmp_path: Path) -> None:
    path = _write_manifest(tmp_path, TWO_STEPS, gateway={"grpcPort": 9301, "httpPort": 9300})
    runner = _runner(["run", str(path)])
    assert (runner.grpc_port, runner.http_port) == (9301, 9300)


def test_run_port_flags_win_over_the_manifest_when_given(tmp_path: Path) -> None:
    path = _write_manifest(tmp_path, TWO_STEPS, gateway={"grpcPort": 9301, "httpPort": 9300})
    runner = _runner(["run", str(path), "--grpc-port", "0", "--http-port", "7000"])
    assert (runner.grpc_port, runner.http_port) == (0, 7000)
    assert _runner(["run", str(path), "--http-port", "-1"]).http_port is None  # -1: HTTP off
    assert _runner(["run", str(path), "--grpc-port", "8001"]).grpc_port == 8001  # explicit, even if it is the usual default


def test_run_without_gateway_ports_in_the_manifest_keeps_8001_and_8000(tmp_path: Path) -> None:
    runner = _runner(["run", str(_write_manifest(tmp_path, TWO_STEPS))])
    assert (runner.grpc_port, runner.http_port) == (8001, 8000)


def test_run_embeds_the_gateway_in_the_entry_steps_process_when_it_has_one_replica(tmp_path: Path) -> None:
    path = _write_manifest(tmp_path, TWO_STEPS)
    assert _runner(["run", str(path)]).gateway_host == "a"  # auto, the default
    assert _runner(["run", str(path), "--gateway", "embedded"]).gateway_host == "a"
    assert _runner(["run", str(path), "--gateway", "separate"]).gateway_host is None
    assert _runner(["run", str(path), "--replicas", "a=2"]).gateway_host is None  # auto: one replica or none
    with pytest.raises(UsageError, match="so that step needs 1 replica \\(it has 2\\)"):
        _runner(["run", str(path), "--replicas", "a=2", "--gateway", "embedded"])
    guest = _write_manifest(tmp_path, [{**TWO_STEPS[0], "inProcessWith": "b"}, TWO_STEPS[1]])
    assert _runner(["run", str(guest)]).gateway_host == "b"  # the entry runs in b's process


def test_an_embedded_gateways_replica_is_started_with_the_gateways_ports_and_the_other_steps(tmp_path: Path) -> None:
    replica = ReplicaProcess("a", 0, 9101, 9102, peers={"b": ["127.0.0.1:9201"]})
    plain = replica.command(tmp_path / "p.yaml", "INFO")
    assert plain[plain.index("-m") + 1 :][:4] == ["conveyor_runtime.cli", "--log-level", "INFO", "step"]
    assert "--pre-stop-delay" in plain
    replica.gateway_ports = (8001, None, 9090)
    replica.endpoints = {"b": ["127.0.0.1:9201"]}
    command = replica.command(tmp_path / "p.yaml", "INFO")
    module = command[command.index("-m") + 1 :]
    assert module[0] == "conveyor_runtime.local.gateway_host"
    flags = " ".join(module)
    assert "--gateway-grpc-port 8001 --gateway-http-port -1 --gateway-metrics-port 9090" in flags
    assert "--endpoint b=127.0.0.1:9201" in flags and "--peer b=127.0.0.1:9201" in flags
    assert "--port 9101 --metrics-port 9102" in flags and "--pre-stop-delay" not in flags


def test_run_rejects_a_step_with_zero_replicas_naming_the_field(tmp_path: Path) -> None:
    path = _write_manifest(tmp_path, [TWO_STEPS[0], {**TWO_STEPS[1], "replicas": 0}])
    with pytest.raises(InvalidManifest) as caught:
        LocalRunner(path)
    assert "spec.steps[1].replicas: 0 replicas cannot serve under conveyor run" in str(caught.value)
    assert "--replicas b=1" in str(caught.value)


def test_run_accepts_zero_replicas_when_the_command_line_sets_that_step(tmp_path: Path) -> None:
    path = _write_manifest(tmp_path, [TWO_STEPS[0], {**TWO_STEPS[1], "replicas": 0}])
    runner = _runner(["run", str(path), "--replicas", "b=2"])
    assert runner.replica_counts == {"a": 1, "b": 2}


def test_run_rejects_a_gateway_with_zero_replicas_naming_the_field(tmp_path: Path) -> None:
    path = _write_manifest(tmp_path, TWO_STEPS, gateway={"replicas": 0})
    with pytest.raises(InvalidManifest, match=r"spec\.gateway\.replicas: 0 replicas cannot serve under conveyor run"):
        LocalRunner(path)


def test_run_command_with_zero_replicas_exits_1_naming_the_field_and_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_manifest(tmp_path, [{**TWO_STEPS[0], "replicas": 0}, TWO_STEPS[1]])
    assert main(["run", str(path), "--grpc-port", "0", "--http-port", "0"]) == 1
    err = capsys.readouterr().err
    assert "InvalidManifest: 1 invalid field(s)" in err
    assert "spec.steps[0].replicas: 0 replicas cannot serve under conveyor run; set at least 1, or pass --replicas a=1" in err
    assert "next: fix the fields listed above" in err


def test_free_ports_are_distinct_and_bindable() -> None:
    """The local runner picks every port of a run at once, so no two of its listeners are handed the same port."""
    ports = free_ports(64)
    assert len(set(ports)) == 64
    for port in ports[:4]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))
