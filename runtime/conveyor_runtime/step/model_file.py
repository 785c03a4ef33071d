"""Where a step's ONNX file is: `model.uri` made a local file (fetched into the cache once), or `model.path`, built on
first use when its spec names a builder (`model.build: module:function`)."""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
from pathlib import Path

from ..errors import ModelLoadError
from ..sources import local_file
from ..spec import ModelSpec

__all__ = ["ensure_model", "resolve_builder"]

log = logging.getLogger(__name__)


def resolve_builder(reference: str) -> object:
    module_name, _, attribute = reference.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(
            f"model builder {reference!r} cannot be imported: {exc}; run this step in an image that has its package "
            "(the examples' builders are in the examples image: `image: conveyor-examples:dev` on the step), "
            "or point `model.uri` at a built model"
        ) from exc


def ensure_model(model: ModelSpec, base_dir: Path | None = None) -> Path:
    """The model's local path: `uri` fetched (or found in the cache, where `conveyor fetch` may have put it), or
    `path`, built first when it is missing and a builder is named.

    The file is written to a temporary name and renamed, so concurrent replicas never load half a file.
    """
    if model.uri is not None:
        return local_file(model.uri, sha256=model.sha256, base_dir=base_dir)
    assert model.path is not None  # ModelSpec: exactly one of path and uri
    path = Path(model.path)
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    if path.exists():
        return path
    if model.build is None:
        raise ModelLoadError(f"model file {path} does not exist; check `model.path` or add `model.build`")
    builder = resolve_builder(model.build)
    if not callable(builder):
        raise ModelLoadError(f"model builder {model.build!r} is not callable")
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("building model %s with %s (first run only)", path, model.build)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        builder(Path(tmp), **model.buildArgs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
