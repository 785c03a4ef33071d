"""`conveyor run` on the digits example, end to end: tritonclient over gRPC and HTTP, accuracy, replica failure."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from conveyor_examples.digits import load_split
from tests.support.pipeline_fixtures import REPO, RunProcess, start_run

DIGITS = REPO / "examples" / "digits" / "pipeline.yaml"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunProcess]:
    run = start_run(DIGITS, tmp_path_factory.mktemp("digits"), "--replicas", "classify=2")
    try:
        yield run
    finally:
        if run.addresses_path.exists():
            run.reload()
        code = run.stop()
        assert code == 0, run.log()
        for replicas in run.addresses["steps"].values():
            for replica in replicas:
                with pytest.raises(ProcessLookupError):
                    os.kill(replica["pid"], 0)  # every step replica is gone after SIGTERM


def test_run_names_its_own_process_as_the_gateways_in_the_addresses_file(digits_run: RunProcess) -> None:
    assert digits_run.addresses["pid"] == digits_run.process.pid  # what `bench pipeline --addresses` counts CPU of


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_run_digits_accuracy_over_grpc_is_at_least_0_9(digits_run: RunProcess) -> None:
    import tritonclient.grpc as tgrpc

    _, _, images, labels = load_split()
    client = tgrpc.InferenceServerClient(digits_run.grpc)
    try:
        assert client.is_model_ready("digits")
        predicted = []
        for start in range(0, len(images), 64):  # several requests, so the classify step batches across them
            tensor = tgrpc.InferInput("image", [len(images[start : start + 64]), 8, 8], "UINT8")
            tensor.set_data_from_numpy(images[start : start + 64])
            result = client.infer("digits", [tensor], client_timeout=60)
            predicted.append(result.as_numpy("indices")[:, 0])
            assert result.as_numpy("labels").shape == (len(images[start : start + 64]), 3)
        accuracy = float((np.concatenate(predicted) == labels).mean())
    finally:
        client.close()
    assert accuracy >= 0.9, f"accuracy {accuracy:.3f} on {len(labels)} held-out digits"


def test_run_digits_serves_tritonclient_http_binary_and_json(digits_run: RunProcess) -> None:
    import tritonclient.http as thttp

    _, _, images, labels = load_split()
    client = thttp.InferenceServerClient(digits_run.http)
    try:
        assert client.is_server_ready() and client.is_model_ready("digits")
        metadata = client.get_model_metadata("digits")
        assert {o["name"] for o in metadata["outputs"]} >= {"scores", "indices", "labels"}
        for binary in (True, False):
            tensor = thttp.InferInput("image", [16, 8, 8], "UINT8")
            tensor.set_data_from_numpy(images[:16], binary_data=binary)
            outputs = [thttp.InferRequestedOutput(name, binary_data=binary) for name in ("indices", "labels")]
            result = client.infer("digits", [tensor], outputs=outputs, timeout=60_000_000)  # microseconds
            indices = result.as_numpy("indices")
            assert indices.shape == (16, 3)
            top = result.as_numpy("labels")[:, 0]
            assert [x.decode() if isinstance(x, bytes) else x for x in top] == [f"digit-{i}" for i in indices[:, 0]]
            assert (indices[:, 0] == labels[:16]).mean() >= 0.75
    finally:
        client.close()


def test_run_digits_survives_a_replica_killed_mid_load(digits_run: RunProcess) -> None:
    import tritonclient.grpc as tgrpc

    _, _, images, labels = load_split()
    victim = digits_run.addresses["steps"]["classify"][0]
    failures: list[BaseException] = []
    done = [0]
    lock = threading.Lock()
    stop = threading.Event()
    halfway = threading.Event()

    def client_loop(seed: int) -> None:
        client = tgrpc.InferenceServerClient(digits_run.grpc)
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                rows = rng.integers(0, len(images), size=4)
                tensor = tgrpc.InferInput("image", [4, 8, 8], "UINT8")
                tensor.set_data_from_numpy(images[rows])
                try:
                    result = client.infer("digits", [tensor], client_timeout=60)
                    assert result.as_numpy("indices").shape == (4, 3)
                except BaseException as exc:
                    failures.append(exc)
                    return
                with lock:
                    done[0] += 1
                    if done[0] >= 40:
                        halfway.set()
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert halfway.wait(60), "the load never got going"
        os.kill(victim["pid"], signal.SIGKILL)
        killed_at = done[0]
        end = time.monotonic() + 60
        while done[0] < killed_at + 80 and time.monotonic() < end and not failures:
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(90)
    assert not failures, f"{len(failures)} request(s) failed, first: {failures[0]!r}"
    assert done[0] >= killed_at + 80

    # the supervisor restarts the killed replica on its ports and reports the new pid
    path = digits_run.addresses_path
    end = time.monotonic() + 60
    while time.monotonic() < end:
        replicas = json.loads(path.read_text())["steps"]["classify"]
        if replicas[0]["pid"] != victim["pid"] and replicas[0]["restarts"] >= 1 and _alive(replicas[0]["pid"]):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"replica was not restarted:\n{digits_run.log()[-3000:]}")
    assert replicas[0]["address"] == victim["address"]
