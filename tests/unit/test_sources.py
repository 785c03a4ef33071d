"""Model sources without a network: the cache layout, paths, file:// and pvc://, config URIs, retry policy, reasons."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conveyor_runtime.sources import (
    CACHE_ENV,
    PVC_ROOT_ENV,
    DigestMismatch,
    FetchError,
    RetryPolicy,
    cache_dir,
    cached_path,
    local_file,
    localize_config,
    reason,
    remote_values,
)


def test_cached_path_with_a_digest_is_under_the_digest() -> None:
    digest = "ab" * 32
    assert cached_path("s3://models/x/model.onnx", digest, Path("/c")) == Path(f"/c/sha256/{digest}/model.onnx")


def test_cached_path_without_a_digest_is_under_the_uri_hash() -> None:
    uri = "https://example.com/models/model%20v2.onnx"
    key = hashlib.sha256(uri.encode()).hexdigest()[:20]
    assert cached_path(uri, None, Path("/c")) == Path(f"/c/uri/{key}/model_v2.onnx")


def test_cache_dir_from_the_env_else_the_home_cache() -> None:
    assert cache_dir({CACHE_ENV: "/var/lib/conveyor/models"}) == Path("/var/lib/conveyor/models")
    assert cache_dir({}) == Path.home() / ".cache/conveyor/models"


def test_local_file_relative_path_and_file_uri_resolve_against_the_base_dir(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    model = tmp_path / "models" / "m.onnx"
    model.write_bytes(b"m")
    assert local_file("models/m.onnx", base_dir=tmp_path) == model
    assert local_file("file://models/m.onnx", base_dir=tmp_path) == model
    assert local_file(f"file://{model}") == model


def test_local_file_missing_path_names_the_uri_and_the_file(tmp_path: Path) -> None:
    with pytest.raises(FetchError) as caught:
        local_file("models/none.onnx", base_dir=tmp_path)
    assert str(caught.value) == f"models/none.onnx: {tmp_path}/models/none.onnx does not exist or is not a file"


def test_local_file_checks_a_local_file_against_its_digest(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    good = hashlib.sha256(b"model").hexdigest()
    assert local_file(str(model), sha256=good) == model
    with pytest.raises(DigestMismatch) as caught:
        local_file(str(model), sha256="1" * 64)
    assert "1" * 64 in str(caught.value) and good in str(caught.value)


def test_local_file_pvc_resolves_under_the_claims_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models-claim" / "resnet").mkdir(parents=True)
    (tmp_path / "models-claim" / "resnet" / "model.onnx").write_bytes(b"m")
    monkeypatch.setenv(PVC_ROOT_ENV, str(tmp_path))
    assert local_file("pvc://models-claim/resnet/model.onnx") == tmp_path / "models-claim" / "resnet" / "model.onnx"


def test_local_file_pvc_outside_a_cluster_says_to_use_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PVC_ROOT_ENV, str(tmp_path / "absent"))
    with pytest.raises(FetchError) as caught:
        local_file("pvc://models-claim/model.onnx")
    message = str(caught.value)
    assert message.startswith("pvc://models-claim/model.onnx: no claims are mounted here")
    assert "outside a cluster use a path or another URI" in message


def test_remote_values_finds_uris_in_nested_config_only() -> None:
    config = {"k": 3, "labels": "s3://b/labels.txt", "local": "labels.txt", "more": [{"vocab": "https://h/v.txt"}, "gs://b/x"]}
    assert remote_values(config) == ["s3://b/labels.txt", "https://h/v.txt", "gs://b/x"]


def test_localize_config_leaves_a_config_without_uris_as_it_is() -> None:
    config = {"k": 3, "labels": "labels.txt", "nested": {"size": [1, 2]}}
    assert localize_config(config) == config


def test_retry_policy_backoff_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(first_backoff_s=1, max_backoff_s=5)
    assert [policy.backoff(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_retry_policy_refuses_zero_attempts() -> None:
    with pytest.raises(ValueError, match="attempts: must be >= 1, got 0"):
        RetryPolicy(attempts=0)


def test_reason_gives_the_status_and_the_s3_code() -> None:
    text = (
        "Error performing GET http://127.0.0.1:9000/models/x in 5ms - Server returned non-2xx status code: 403 Forbidden: "
        "<?xml version='1.0'?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
    )
    assert reason(RuntimeError(text)) == "403 AccessDenied"
    assert reason(RuntimeError("Server returned non-2xx status code: 404 Not Found: ")) == "404 Not Found"


def test_reason_of_a_connection_error_names_the_server() -> None:
    text = "Generic S3 error: Error performing GET http://127.0.0.1:9000/models/x in 51ms, after 1 retries - HTTP error: error sending request"
    assert reason(RuntimeError(text)) == "HTTP error: error sending request (127.0.0.1:9000)"
