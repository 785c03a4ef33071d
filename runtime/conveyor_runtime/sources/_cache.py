"""Where fetched files live: ``<cache>/sha256/<digest>/<name>`` with a digest, else ``<cache>/uri/<sha256(uri)[:20]>/<name>``.

The path depends only on the URI and the digest, so a pod's init container and its step (or two local runs) agree
on it without talking; a file present there is complete (it was written to a temporary name and renamed).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["CACHE_ENV", "DEFAULT_CACHE", "cache_dir", "cached_path"]

#: Overrides the cache directory (the operator sets it to the pod's model volume).
CACHE_ENV = "CONVEYOR_MODEL_CACHE"
DEFAULT_CACHE = Path("~/.cache/conveyor/models")


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$CONVEYOR_MODEL_CACHE, else ~/.cache/conveyor/models."""
    environ = os.environ if environ is None else environ
    return Path(environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def _file_name(uri: str) -> str:
    name = unquote(urlsplit(uri).path.rsplit("/", 1)[-1])
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".")
    return name or "model"


def cached_path(uri: str, sha256: str | None, cache: Path) -> Path:
    """The local file that `uri` (with digest `sha256`, if known) is fetched into."""
    if sha256:
        return cache / "sha256" / sha256 / _file_name(uri)
    return cache / "uri" / hashlib.sha256(uri.encode()).hexdigest()[:20] / _file_name(uri)
