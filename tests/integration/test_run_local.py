"""`conveyor run` with real processes: long output lines, the Ctrl-C order, and replicas outliving a killed runner."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from conveyor_runtime.local.output import forward_lines
from tests.support.pipeline_fixtures import RUN_TEST_OPS, RunProcess, start_run


def _pipeline(tmp_path: Path, name: str, steps: list[dict[str, Any]]) -> Path:
    (tmp_path / "testops.py").write_text(RUN_TEST_OPS)
    path = tmp_path / "pipeline.yaml"
    document = {
        "apiVersion": "conveyor.dev/v1alpha1",
        "kind": "InferencePipeline",
        "metadata": {"name": name},
        "spec": {"steps": steps},
    }
    path.write_text(yaml.safe_dump(document))
    return path


def _infer(run: RunProcess, model: str, data: np.ndarray) -> np.ndarray:
    import tritonclient.grpc as tgrpc

    client = tgrpc.InferenceServerClient(run.grpc)
    try:
        tensor = tgrpc.InferInput("x", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        result = client.infer(model, [tensor], client_timeout=120)
        answer = result.as_numpy("x")
        assert answer is not None
        return np.asarray(answer)
    finally:
        client.close()


def _wait_for(condition: Callable[[], bool], what: str, run: RunProcess, timeout: float = 60.0) -> None:
    """Poll `condition` (bounded, so a broken runner fails the test instead of hanging it)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"{what} did not happen within {timeout:.0f}s:\n{run.log()[-4000:]}")
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def _replica_pids(run: RunProcess) -> list[int]:
    return [int(replica["pid"]) for replicas in run.addresses["steps"].values() for replica in replicas]


def _kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)


# --- output forwarding -------------------------------------------------------------------------------------------

CHILD = """
import sys
sys.stdout.write("x" * 2**20 + "\\n")
print("after the long line", flush=True)
for i in range(20000):  # ~1.3 MB more: far beyond a pipe's buffer, so it blocks unless someone keeps reading
    print(f"line {i:05d} " + "z" * 50)
print("done", flush=True)
"""


def test_forward_lines_keeps_forwarding_after_a_1_mib_line_and_the_child_never_blocks() -> None:
    async def scenario() -> tuple[list[str], int]:
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, stdout=asyncio.subprocess.PIPE)
        assert child.stdout is not None
        lines: list[str] = []

        def emit(line: str) -> None:
            if not lines:
                lines.append(line)
                raise OSError("the terminal went away")  # a failing sink must not stop the forwarding either
            lines.append(line)

        forwarding = asyncio.ensure_future(forward_lines(child.stdout, emit, max_bytes=16 * 1024))
        code = await asyncio.wait_for(child.wait(), 120)  # bounded: a blocked child fails the test, not hangs it
        await asyncio.wait_for(forwarding, 60)
        return lines, code

    lines, code = asyncio.run(scenario())
    assert code == 0
    assert lines[0] == "x" * 16 * 1024 + f" ... [line cut: {2**20} bytes, the first {16 * 1024} shown]"
    assert lines[1] == "after the long line"
    assert lines[2:-1] == [f"line {i:05d} " + "z" * 50 for i in range(20000)]
    assert lines[-1] == "done"


def test_run_serves_a_step_that_prints_1_mib_lines(tmp_path: Path) -> None:
    path = _pipeline(tmp_path, "chatty", [{"name": "talk", "op": "testops:Chatty"}])
    run = start_run(path, tmp_path, "--ready-timeout", "60", timeout=120)
    try:
        for _ in range(3):  # each request prints another 1 MiB line from the replica
            data = np.arange(6, dtype=np.float32).reshape(2, 3)
            np.testing.assert_array_equal(_infer(run, "chatty", data), data)
    finally:
        code = run.stop()
    log = run.log()
    assert code == 0, log[-4000:]
    assert "[talk-0] chatty: still talking after the long line" in log
    assert log.count(f" ... [line cut: {2**20} bytes,") == 4  # the init line and one per request, each cut


# --- Ctrl-C -----------------------------------------------------------------------------------------------------


def test_run_ctrl_c_finishes_in_flight_requests_through_every_step_before_stopping_steps(tmp_path: Path) -> None:
    path = _pipeline(
        tmp_path,
        "held",
        [{"name": "hold", "op": "testops:Hold", "config": {"dir": str(tmp_path)}}, {"name": "echo", "op": "identity"}],
    )
    run = start_run(path, tmp_path, "--grace", "60", "--gateway", "separate")  # embedded: test_embedded_gateway.py
    pids = _replica_pids(run)
    data = np.arange(4, dtype=np.float32).reshape(1, 4)
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(_infer, run, "held", data)
            _wait_for((tmp_path / "entered").exists, "the request reaching the first step", run)
            os.killpg(run.process.pid, signal.SIGINT)  # Ctrl-C in a terminal: SIGINT to the foreground process group
            _wait_for(lambda: "stopping ..." in run.log(), "the runner noticing Ctrl-C", run)
            (tmp_path / "release").touch()  # the request may now leave the first step for the second
            np.testing.assert_array_equal(answer.result(120), data)
        assert run.process.wait(120) == 0, run.log()[-4000:]
    finally:
        run.stop()
        _kill_leftovers(pids)
    log = run.log().splitlines()
    replica_lines = [i for i, line in enumerate(log) if line.startswith(("[hold-0]", "[echo-0]"))]
    signalled = [i for i in replica_lines if "received; shutting down" in log[i]]
    assert not [log[i] for i in replica_lines if "SIGINT" in log[i]], "Ctrl-C reached the step replicas"
    stopping_steps = next(i for i, line in enumerate(log) if line.startswith("gateway stopped; stopping 2 step replica(s)"))
    assert signalled and min(signalled) > stopping_steps, "\n".join(log)
    assert all(_gone(pid) for pid in pids)


def test_run_stops_replicas_without_a_pre_stop_delay(tmp_path: Path) -> None:
    path = _pipeline(tmp_path, "quick", [{"name": "a", "op": "identity"}])
    run = start_run(path, tmp_path)
    code = run.stop()
    log = run.log()
    assert code == 0, log[-4000:]
    replica_lines = [line for line in log.splitlines() if line.startswith("[a-0]")]
    assert any("NOT_SERVING; refusing new calls" in line for line in replica_lines), log[-4000:]
    assert not [line for line in replica_lines if "pre-stop" in line]  # the gateway already stopped: nothing to wait for


def test_run_replicas_exit_when_the_runner_is_killed(tmp_path: Path) -> None:
    path = _pipeline(tmp_path, "orphans", [{"name": "a", "op": "identity"}, {"name": "b", "op": "identity", "replicas": 2}])
    run = start_run(path, tmp_path)
    pids = _replica_pids(run)
    try:
        os.kill(run.process.pid, signal.SIGKILL)  # the runner alone: no chance to stop anything
        run.process.wait(60)
        _wait_for(lambda: all(_gone(pid) for pid in pids), "every replica exiting", run)
    finally:
        run.stop()
        _kill_leftovers(pids)
