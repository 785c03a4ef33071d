"""`model.uri`, `sha256`, `credentialsSecret`, `cacheSizeLimit`: what the spec accepts and the field each error names."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from conveyor_runtime.errors import InvalidManifest
from conveyor_runtime.spec import ModelSpec, parse_manifest, step_from_env, step_to_env

DIGEST = "a" * 64


def manifest(model: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "conveyor.dev/v1alpha1",
        "kind": "InferencePipeline",
        "metadata": {"name": "sources"},
        "spec": {"steps": [{"name": "classify", "model": copy.deepcopy(model)}]},
    }


def errors(model: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(manifest(model))
    return [(e.path, e.message) for e in info.value.errors]


@pytest.mark.parametrize(
    "uri",
    [
        "s3://models/classify/model.onnx",
        "gs://bucket/a.onnx",
        "az://container/dir/a.onnx",
        "https://example.com/models/a.onnx",
        "http://127.0.0.1:9000/a.onnx",
        "file:///abs/model.onnx",
        "pvc://models-claim/resnet/model.onnx",
        "models/relative.onnx",
    ],
)
def test_model_spec_accepts_each_uri_form(uri: str) -> None:
    step = parse_manifest(manifest({"uri": uri})).spec.steps[0]
    assert step.model is not None and step.model.uri == uri and step.model.path is None


def test_model_spec_defaults_of_the_source_fields() -> None:
    model = ModelSpec(uri="s3://models/a.onnx")
    assert (model.sha256, model.credentialsSecret, model.cacheSizeLimit) == (None, None, "8Gi")


def test_model_spec_needs_path_or_uri_naming_both() -> None:
    [(path, message)] = errors({"device": "cpu"})
    assert path == "spec.steps[0].model"
    assert "exactly one of `path` or `uri`" in message and "neither" in message


def test_model_spec_refuses_both_path_and_uri() -> None:
    [(path, message)] = errors({"path": "a.onnx", "uri": "s3://models/a.onnx"})
    assert path == "spec.steps[0].model" and "exactly one of `path` or `uri`" in message and "both" in message


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("ftp://host/a.onnx", "scheme 'ftp' is not supported"),
        ("s3://bucket", "must name a file"),
        ("s3://bucket/dir/", "must name a file"),
        ("s3:///key.onnx", "names no bucket"),
        ("https://host/a.onnx?sig=1", "query string"),
        ("pvc://Bad_Claim/a.onnx", "not a valid PersistentVolumeClaim name"),
        ("pvc://claim/../etc/passwd", "'..'"),
        ("", "must not be empty"),
    ],
)
def test_model_spec_rejects_a_bad_uri_naming_the_field(uri: str, words: str) -> None:
    [(path, message)] = errors({"uri": uri})
    assert path == "spec.steps[0].model.uri" and words in message


@pytest.mark.parametrize("digest", ["abc", "A" * 64, "g" * 64, "a" * 65])
def test_model_spec_rejects_a_sha256_that_is_not_64_lower_case_hex_digits(digest: str) -> None:
    [(path, message)] = errors({"uri": "s3://models/a.onnx", "sha256": digest})
    assert path == "spec.steps[0].model.sha256" and "64 lower-case hex digits" in message and repr(digest) in message


def test_model_spec_rejects_a_secret_name_that_kubernetes_would_refuse() -> None:
    [(path, message)] = errors({"uri": "s3://models/a.onnx", "credentialsSecret": "My_Secret"})
    assert path == "spec.steps[0].model.credentialsSecret" and "Secret name" in message


def test_model_spec_rejects_a_cache_size_limit_that_is_no_quantity() -> None:
    [(path, message)] = errors({"uri": "s3://models/a.onnx", "cacheSizeLimit": "lots"})
    assert path == "spec.steps[0].model.cacheSizeLimit" and "quantity" in message


def test_model_spec_build_goes_with_path_only() -> None:
    [(path, message)] = errors({"uri": "s3://models/a.onnx", "build": "examples.x:build"})
    assert path == "spec.steps[0].model.build" and "`path`" in message


def test_model_spec_source_fields_round_trip_through_the_step_env() -> None:
    step = parse_manifest(
        manifest({"uri": "s3://models/a.onnx", "sha256": DIGEST, "credentialsSecret": "s3-creds", "cacheSizeLimit": "2Gi"})
    ).spec.steps[0]
    assert step_from_env(step_to_env(step)) == step
