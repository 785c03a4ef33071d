"""Model and op files from anywhere: a path, file://, pvc://, or downloaded once (http(s)://, s3://, gs://, az://).

`local_file` is the one entry point; downloads go through obstore into a cache shared by `conveyor fetch` (a pod's
init container), `conveyor step` and `conveyor run`.
"""

from ._cache import CACHE_ENV, DEFAULT_CACHE, cache_dir, cached_path
from ._errors import DigestMismatch, FetchError
from ._fetch import CHUNK_BYTES, Progress, RetryPolicy, download, reason, sha256_of
from ._resolve import DEFAULT_PVC_ROOT, PVC_ROOT_ENV, local_file, localize_config, pvc_root, remote_values

__all__ = [
    "CACHE_ENV",
    "CHUNK_BYTES",
    "DEFAULT_CACHE",
    "DEFAULT_PVC_ROOT",
    "PVC_ROOT_ENV",
    "DigestMismatch",
    "FetchError",
    "Progress",
    "RetryPolicy",
    "cache_dir",
    "cached_path",
    "download",
    "local_file",
    "localize_config",
    "pvc_root",
    "reason",
    "remote_values",
    "sha256_of",
]
