"""A source URI made a local file: paths and file:// as they are, pvc:// under the claims' mount root, the rest fetched."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..spec.uris import REMOTE_SCHEMES, is_remote_uri, uri_scheme
from ._cache import cache_dir
from ._errors import DigestMismatch, FetchError
from ._fetch import OnChunk, RetryPolicy, download, sha256_of

__all__ = ["DEFAULT_PVC_ROOT", "PVC_ROOT_ENV", "local_file", "localize_config", "pvc_root", "remote_values"]

#: Where the operator mounts each claim a step reads (`<root>/<claim>`), read-only.
PVC_ROOT_ENV = "CONVEYOR_PVC_ROOT"
DEFAULT_PVC_ROOT = Path("/var/lib/conveyor/pvc")


def pvc_root(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get(PVC_ROOT_ENV) or DEFAULT_PVC_ROOT)


def _local(uri: str, base_dir: Path | None) -> Path:
    scheme = uri_scheme(uri)
    if scheme == "pvc":
        claim, _, inside = uri.split("://", 1)[1].partition("/")
        root = pvc_root()
        if not root.is_dir():
            raise FetchError(
                uri,
                f"no claims are mounted here ({root} does not exist; in a pod the operator mounts them): "
                f"outside a cluster use a path or another URI, or set {PVC_ROOT_ENV} to a directory holding {claim}/",
            )
        return root / claim / inside
    path = Path(uri.split("://", 1)[1] if scheme == "file" else uri)
    return path if path.is_absolute() else (base_dir or Path.cwd()) / path


def local_file(
    uri: str,
    *,
    sha256: str | None = None,
    base_dir: Path | None = None,
    cache: Path | None = None,
    policy: RetryPolicy | None = None,
    progress_every_s: float = 5.0,
    on_chunk: OnChunk | None = None,
) -> Path:
    """The local file for `uri`: downloaded into the cache (once) when remote, checked against `sha256` when given.

    Relative paths and file:// paths are relative to `base_dir` (the manifest's directory); `cache` defaults to
    $CONVEYOR_MODEL_CACHE or ~/.cache/conveyor/models.
    """
    if uri_scheme(uri) in REMOTE_SCHEMES:
        return download(
            uri,
            cache or cache_dir(),
            sha256=sha256,
            policy=policy,
            progress_every_s=progress_every_s,
            on_chunk=on_chunk,
        )
    path = _local(uri, base_dir)
    if not path.is_file():
        raise FetchError(uri, f"{path} does not exist or is not a file")
    if sha256 is not None:
        actual = sha256_of(path)
        if actual != sha256:
            raise DigestMismatch(uri, sha256, actual)
    return path


def remote_values(config: Mapping[str, Any]) -> list[str]:
    """Every remote URI among an op config's string values (nested lists and objects included), in order."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if is_remote_uri(value):
            found.append(value)
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(config)
    return found


def localize_config(config: Mapping[str, Any], *, cache: Path | None = None, policy: RetryPolicy | None = None) -> dict[str, Any]:
    """A copy of an op's config in which every remote URI value is replaced by its fetched local path (a string)."""

    def swap(value: Any) -> Any:
        if is_remote_uri(value):
            return str(local_file(value, cache=cache, policy=policy))
        if isinstance(value, Mapping):
            return {key: swap(item) for key, item in value.items()}
        if isinstance(value, list):
            return [swap(item) for item in value]
        return value

    return {key: swap(value) for key, value in config.items()}
