"""Reading manifests: `load_manifest` (a YAML file) and `parse_manifest` (a parsed document) check the schema,
then the graph, and raise `InvalidManifest` naming every broken field path, e.g. ``spec.steps[1].inputs[0]``.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import FieldError, InvalidManifest
from . import model as _model
from .graph import graph_errors
from .model import KIND, PipelineManifest
from .names import name_errors

__all__ = ["load_manifest", "parse_manifest", "validation_field_errors"]


#: The spec's models by class name (a ValidationError's `title`), to list a model's fields.
_MODELS: dict[str, type[BaseModel]] = {
    name: value for name, value in vars(_model).items() if isinstance(value, type) and issubclass(value, BaseModel)
}


def _fields(loc: tuple[int | str, ...]) -> list[str | int]:
    """The field names and list indexes of a pydantic error location (validator frames left out)."""
    return [
        part
        for part in loc
        if isinstance(part, int) or not (part in {"function-after", "function-before", "function-wrap"} or "[" in part)
    ]


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in _fields(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model inside an annotation such as `StepSpec`, `list[StepSpec]` or `ModelSpec | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in {list, typing.Union, types.UnionType}:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _known_fields(root: type[BaseModel] | None, loc: tuple[int | str, ...]) -> list[str]:
    """The fields of the model that holds the last part of `loc` ([] when it cannot be told)."""
    current = root
    for part in _fields(loc)[:-1]:
        if isinstance(part, str):
            field = current.model_fields.get(part) if current is not None else None
            current = _model_in(field.annotation) if field is not None else None
    return list(current.model_fields) if current is not None else []


def validation_field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    """Pydantic's errors as `FieldError`s with manifest paths (``spec.steps[1].batching.maxBatchSize``)."""
    result = []
    root = _MODELS.get(exc.title)
    for err in exc.errors():
        path = _loc_to_path(tuple(err["loc"]))
        if prefix:
            path = f"{prefix}.{path}" if path and not path.startswith("[") else f"{prefix}{path}"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] not in {"missing", "extra_forbidden"} and "input" in err and not isinstance(err["input"], (dict, list)):
            message += f", got {err['input']!r}"
        if err["type"] == "extra_forbidden":
            known = _known_fields(root, tuple(err["loc"]))
            message = f"unknown field; known fields: {', '.join(known)}" if known else "unknown field"
        result.append(FieldError(path, message))
    return result


def parse_manifest(data: Any, source: str = "") -> PipelineManifest:
    """Validate a manifest (a parsed YAML/JSON document); raises `InvalidManifest` naming each broken field."""
    if not isinstance(data, Mapping):
        raise InvalidManifest([FieldError("", f"a manifest must be a mapping, got {type(data).__name__}")], source)
    try:
        manifest = PipelineManifest.model_validate(data)
    except ValidationError as exc:
        raise InvalidManifest(validation_field_errors(exc), source) from None
    errors = graph_errors(manifest.spec) + name_errors(manifest.metadata.name, manifest.spec)
    if errors:
        raise InvalidManifest(errors, source)
    return manifest


def load_manifest(path: str | Path) -> PipelineManifest:
    """Read and validate a manifest file (the very file a user would `kubectl apply`)."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise InvalidManifest([FieldError("", f"cannot read {file}: {exc.strerror}")], str(file)) from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise InvalidManifest([FieldError("", f"not valid YAML: {exc}")], str(file)) from None
    pipelines = [d for d in documents if isinstance(d, Mapping) and d.get("kind") == KIND]
    if len(pipelines) != 1:
        raise InvalidManifest([FieldError("kind", f"expected one {KIND} document, found {len(pipelines)}")], str(file))
    return parse_manifest(pipelines[0], str(file))
