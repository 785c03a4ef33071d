"""Fetching models from a real S3-compatible server (moto's, authentication on) on 127.0.0.1 through obstore."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor_runtime.sources import DigestMismatch, FetchError, RetryPolicy, cached_path, local_file
from tests.support.s3_server import S3Server, s3_server

DATA = os.urandom(3 * 1024 * 1024 + 17)
DIGEST = hashlib.sha256(DATA).hexdigest()
#: Short waits: the tests need the retries, not their patience.
QUICK = RetryPolicy(attempts=3, first_backoff_s=0.05, max_backoff_s=0.2, request_retries=1, request_retry_timeout_s=5)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server(buckets=["models"]) as server:
        server.upload("models/classify/model.onnx", DATA)
        yield server


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return s3


def files_in(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file())


def test_fetch_s3_without_digest_downloads_into_the_uri_cache(s3_env: S3Server, tmp_path: Path) -> None:
    path = local_file("s3://models/classify/model.onnx", cache=tmp_path, policy=QUICK)
    assert path == cached_path("s3://models/classify/model.onnx", None, tmp_path)
    assert path.parent.parent == tmp_path / "uri" and path.name == "model.onnx"
    assert path.read_bytes() == DATA and files_in(tmp_path) == [path]


def test_fetch_s3_with_digest_verifies_and_lands_under_the_digest(s3_env: S3Server, tmp_path: Path) -> None:
    path = local_file("s3://models/classify/model.onnx", sha256=DIGEST, cache=tmp_path, policy=QUICK)
    assert path == tmp_path / "sha256" / DIGEST / "model.onnx" and path.read_bytes() == DATA


def test_fetch_s3_uploaded_file_round_trips(s3_env: S3Server, tmp_path: Path) -> None:
    source = tmp_path / "labels.txt"
    source.write_text("cat\ndog\n")
    uri = s3_env.upload("models/labels/labels.txt", source)
    assert uri == "s3://models/labels/labels.txt"
    assert local_file(uri, cache=tmp_path / "cache", policy=QUICK).read_text() == "cat\ndog\n"


def test_fetch_s3_logs_progress_and_the_rate(s3_env: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="conveyor_runtime.sources"):
        local_file("s3://models/classify/model.onnx", cache=tmp_path, policy=QUICK, progress_every_s=0)
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fetching s3://models/classify/model.onnx:")]
    assert progress and progress[-1].endswith("MB/s)") and "(100%)" in progress[-1]
    assert any(r.getMessage().startswith("fetched s3://models/classify/model.onnx: 3.1 MB in") for r in caplog.records)


def test_fetch_s3_wrong_digest_gives_both_digests_and_keeps_nothing(s3_env: S3Server, tmp_path: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(DigestMismatch) as caught:
        local_file("s3://models/classify/model.onnx", sha256=wrong, cache=tmp_path, policy=QUICK)
    message = str(caught.value)
    assert message.startswith("s3://models/classify/model.onnx: sha256 mismatch")
    assert wrong in message and DIGEST in message
    assert files_in(tmp_path) == []


def test_fetch_s3_missing_key_says_no_such_key(s3_env: S3Server, tmp_path: Path) -> None:
    with pytest.raises(FetchError) as caught:
        local_file("s3://models/classify/missing.onnx", cache=tmp_path, policy=QUICK)
    assert str(caught.value) == "s3://models/classify/missing.onnx: 404 NoSuchKey"
    assert files_in(tmp_path) == []


def test_fetch_s3_wrong_credentials_say_403(s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(FetchError) as caught:
        local_file("s3://models/classify/model.onnx", cache=tmp_path, policy=QUICK)
    assert str(caught.value) == "s3://models/classify/model.onnx: 403 SignatureDoesNotMatch"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    with pytest.raises(FetchError) as caught:
        local_file("s3://models/classify/model.onnx", cache=tmp_path, policy=QUICK)
    assert str(caught.value) == "s3://models/classify/model.onnx: 403 InvalidAccessKeyId"


def test_fetch_s3_second_fetch_reads_the_cache_without_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with s3_server(buckets=["models"]) as server:
        uri = server.upload("models/m.onnx", DATA)
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        first = local_file(uri, sha256=DIGEST, cache=tmp_path, policy=QUICK)
    assert not server.running
    assert local_file(uri, sha256=DIGEST, cache=tmp_path, policy=QUICK) == first


def test_fetch_s3_server_stopped_mid_download_retries_then_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    big = os.urandom(64 * 1024 * 1024)  # far more than loopback's socket buffers hold
    with s3_server(buckets=["models"]) as server:
        uri = server.upload("models/big.onnx", big)
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)

        def stop_server(done: int, total: int | None) -> None:
            assert total == len(big) and done < total
            server.stop()

        with caplog.at_level(logging.WARNING, logger="conveyor_runtime.sources"), pytest.raises(FetchError) as caught:
            local_file(uri, cache=tmp_path, policy=QUICK, on_chunk=stop_server)
    assert str(caught.value).startswith("s3://models/big.onnx: ") and str(caught.value).endswith("(after 3 attempts)")
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fetching s3://models/big.onnx failed")]
    assert [m.split("; ")[-1].split(" in ")[0] for m in retries] == ["attempt 2 of 3", "attempt 3 of 3"]
    assert files_in(tmp_path) == []


def test_an_s3_server_that_never_becomes_ready_fails_its_fixture_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent = tmp_path / "python"  # stands in for moto's Python: starts, then never prints its endpoint
    silent.write_text("#!/bin/sh\nexec sleep 600\n")
    silent.chmod(0o755)
    monkeypatch.setenv("CONVEYOR_S3_SERVER_PYTHON", str(silent))
    with pytest.raises(RuntimeError, match="was not ready within 1s"):
        with s3_server(ready_timeout_s=1):
            pass
