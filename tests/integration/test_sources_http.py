"""Fetching models over HTTP from a real aiohttp server on 127.0.0.1: redirects, 404, slow, flaky and dropping servers."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor_runtime.ops import Op, OpContext
from conveyor_runtime.sources import CACHE_ENV, FetchError, RetryPolicy, cached_path, local_file
from conveyor_runtime.spec import StepSpec
from conveyor_runtime.step import load_step_op
from tests.support.http_server import HttpFileServer, http_server

DATA = os.urandom(2 * 1024 * 1024 + 5)
DIGEST = hashlib.sha256(DATA).hexdigest()
QUICK = RetryPolicy(attempts=3, first_backoff_s=0.05, max_backoff_s=0.2, request_retries=3, request_retry_timeout_s=10)


@pytest.fixture
def http() -> Iterator[HttpFileServer]:
    with http_server({"model.onnx": DATA}, slow_delay_s=0.05, flaky_failures=2) as server:
        yield server


def test_fetch_http_downloads_and_verifies_the_digest(http: HttpFileServer, tmp_path: Path) -> None:
    path = local_file(http.url("files/model.onnx"), sha256=DIGEST, cache=tmp_path, policy=QUICK)
    assert path.read_bytes() == DATA and path == tmp_path / "sha256" / DIGEST / "model.onnx"


def test_fetch_http_follows_a_redirect(http: HttpFileServer, tmp_path: Path) -> None:
    path = local_file(http.url("redirect/model.onnx"), cache=tmp_path, policy=QUICK)
    assert path.read_bytes() == DATA
    assert (http.hits["redirect/model.onnx"], http.hits["files/model.onnx"]) == (1, 1)


def test_fetch_http_404_says_not_found_without_retrying(http: HttpFileServer, tmp_path: Path) -> None:
    uri = http.url("files/missing.onnx")
    with pytest.raises(FetchError) as caught:
        local_file(uri, cache=tmp_path, policy=QUICK)
    assert str(caught.value) == f"{uri}: 404 Not Found"
    assert http.hits["files/missing.onnx"] == 1
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_fetch_http_slow_server_completes_with_progress(
    http: HttpFileServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = http.url("slow/model.onnx")
    with caplog.at_level(logging.INFO, logger="conveyor_runtime.sources"):
        path = local_file(uri, sha256=DIGEST, cache=tmp_path, policy=QUICK, progress_every_s=0)
    assert path.read_bytes() == DATA
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"fetching {uri}: ")]
    assert done[-1].startswith(f"fetching {uri}: 2.1 of 2.1 MB (100%)")


def test_fetch_http_server_errors_are_retried(http: HttpFileServer, tmp_path: Path) -> None:
    path = local_file(http.url("flaky/model.onnx"), sha256=DIGEST, cache=tmp_path, policy=QUICK)
    assert path.read_bytes() == DATA and http.hits["flaky/model.onnx"] == 3


def test_fetch_http_connection_dropped_mid_download_is_fetched_again(http: HttpFileServer, tmp_path: Path) -> None:
    path = local_file(http.url("drop/model.onnx"), sha256=DIGEST, cache=tmp_path, policy=QUICK)
    assert path.read_bytes() == DATA and http.hits["drop/model.onnx"] >= 3
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [path]


def test_fetch_http_a_server_that_stalls_times_out_clearly(tmp_path: Path) -> None:
    stalling = RetryPolicy(attempts=2, first_backoff_s=0.05, max_backoff_s=0.1, request_retries=0, read_timeout_s=0.5)
    with http_server({"model.onnx": DATA}, slow_delay_s=30) as http:
        uri = http.url("slow/model.onnx")
        with pytest.raises(FetchError) as caught:
            local_file(uri, cache=tmp_path, policy=stalling)
    assert str(caught.value).startswith(f"{uri}: ") and str(caught.value).endswith("(after 2 attempts)")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


class ReadsLabels(Op):
    """Keeps what `init` got: the config (with `labels` made a local path) and the labels file's text."""

    def init(self, config: dict[str, Any], context: OpContext) -> None:
        self.config = config
        self.text = Path(config["files"][0]["labels"]).read_text()


def test_op_config_uri_reaches_the_op_as_a_local_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    with http_server({"labels.txt": b"cat\ndog\n"}) as http:
        uri = http.url("files/labels.txt")
        spec = StepSpec.model_validate(
            {"name": "labels", "op": "tests.integration.test_sources_http:ReadsLabels", "config": {"k": 2, "files": [{"labels": uri}]}}
        )
        op = load_step_op(spec, tmp_path)
    assert type(op).__name__ == "ReadsLabels"  # (loaded by its reference: another copy of this module)
    assert op.text == "cat\ndog\n"  # type: ignore[attr-defined]
    assert op.config == {"k": 2, "files": [{"labels": str(cached_path(uri, None, tmp_path))}]}
    assert spec.config["files"][0]["labels"] == uri  # the spec itself is left as it was
