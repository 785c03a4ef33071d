"""Downloads with obstore: one library for S3-compatible stores, GCS, Azure and HTTP(S), its request retries included.

Around it: whole-download retries with backoff (a server gone mid-download), progress in the log, the sha256
checked while the bytes stream by, and the file written to a temporary name and renamed into the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import obstore
from obstore.exceptions import PermissionDeniedError, UnauthenticatedError
from obstore.store import HTTPStore, from_url

from ..spec.uris import uri_scheme
from ._cache import cached_path
from ._errors import DigestMismatch, FetchError

if TYPE_CHECKING:
    from obstore.store import ClientConfig, ObjectStore, RetryConfig

__all__ = ["CHUNK_BYTES", "OnChunk", "Progress", "RetryPolicy", "download", "reason", "sha256_of"]

log = logging.getLogger(__name__)

#: Bytes handed over from the store per step of the stream (also the granularity of progress and hashing).
CHUNK_BYTES = 8 * 1024 * 1024

#: Called after each chunk with (bytes so far, total bytes or None).
OnChunk = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a fetch tries. obstore retries each request (5xx, refused or dropped connections) itself; a download
    that breaks mid-stream is started again here, `attempts` times in all, waiting `first_backoff_s` doubling up to
    `max_backoff_s` in between."""

    attempts: int = 4
    first_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    request_retries: int = 5
    request_retry_timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    #: A server that sends nothing for this long counts as gone (the transfer as a whole has no time limit).
    read_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts: must be >= 1, got {self.attempts}")
        if self.first_backoff_s < 0 or self.max_backoff_s < self.first_backoff_s:
            raise ValueError(f"backoff: need 0 <= first_backoff_s <= max_backoff_s, got {self.first_backoff_s}, {self.max_backoff_s}")

    def backoff(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failed attempt (1-based)."""
        return float(min(self.first_backoff_s * 2 ** (failures - 1), self.max_backoff_s))

    def client_options(self) -> ClientConfig:
        # allow_http: plain http is only ever used when the URI or AWS_ENDPOINT_URL says so (a local or in-cluster store).
        return {
            "allow_http": True,
            "connect_timeout": timedelta(seconds=self.connect_timeout_s),
            "read_timeout": timedelta(seconds=self.read_timeout_s),
            "timeout": timedelta(days=1),
        }

    def retry_config(self) -> RetryConfig:
        return {
            "max_retries": self.request_retries,
            "retry_timeout": timedelta(seconds=self.request_retry_timeout_s),
            "backoff": {"init_backoff": timedelta(seconds=min(0.1, self.first_backoff_s or 0.1)), "max_backoff": timedelta(seconds=self.max_backoff_s)},
        }


class Progress:
    """Logs a download's progress (bytes, MB/s) at most every `every_s` seconds, and once when it is done."""

    def __init__(self, uri: str, every_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.uri = uri
        self.every_s = every_s
        self._clock = clock
        self.started = self._last = clock()
        self.done = 0
        self.total: int | None = None

    def start(self, total: int | None) -> None:
        self.total = total
        self.done = 0
        self.started = self._last = self._clock()

    def advance(self, count: int) -> None:
        self.done += count
        now = self._clock()
        if now - self._last >= self.every_s:
            self._last = now
            log.info("fetching %s: %s (%.1f MB/s)", self.uri, self._amount(), self.rate(now))

    def rate(self, now: float | None = None) -> float:
        elapsed = (self._clock() if now is None else now) - self.started
        return self.done / 1e6 / elapsed if elapsed > 0 else 0.0

    def _amount(self) -> str:
        if self.total:
            return f"{self.done / 1e6:.1f} of {self.total / 1e6:.1f} MB ({100 * self.done // self.total}%)"
        return f"{self.done / 1e6:.1f} MB"

    def finish(self, path: Path) -> None:
        elapsed = self._clock() - self.started
        log.info("fetched %s: %.1f MB in %.1f s (%.1f MB/s) -> %s", self.uri, self.done / 1e6, elapsed, self.rate(), path)


def _open(uri: str, policy: RetryPolicy) -> tuple[ObjectStore, str]:
    """The store that holds `uri` and the object's path in it (credentials and endpoint from the environment)."""
    scheme = uri_scheme(uri)
    if scheme in ("http", "https"):
        base, _, name = uri.rpartition("/")
        return HTTPStore.from_url(base, client_options=policy.client_options(), retry_config=policy.retry_config()), unquote(name)
    parts = urlsplit(uri)
    store = from_url(f"{scheme}://{parts.netloc}", client_options=policy.client_options(), retry_config=policy.retry_config())
    return store, unquote(parts.path.lstrip("/"))


_STATUS = re.compile(r"(?:status code|status): (\d{3})(?: ([A-Za-z][A-Za-z ]*[A-Za-z]))?")
_S3_CODE = re.compile(r"<Code>([^<]+)</Code>")
_PERFORMING = re.compile(r"Error performing [A-Z]+ (\S+)")


def _status(error: BaseException) -> int | None:
    found = _STATUS.search(str(error))
    return int(found.group(1)) if found else None


def reason(error: BaseException) -> str:
    """An obstore error in a few words: ``403 AccessDenied``, ``404 Not Found``, or its first line."""
    text = str(error)
    status = _STATUS.search(text)
    code = _S3_CODE.search(text)
    if status:
        return f"{status.group(1)} {code.group(1) if code else status.group(2) or ''}".strip()
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    performing = _PERFORMING.search(first)
    if performing:  # "... Error performing GET http://host/... in 51ms, after 1 retries, ... - HTTP error: error sending request"
        first = f"{first.rsplit(' - ', 1)[-1].strip()} ({urlsplit(performing.group(1)).netloc})"
    return first if len(first) <= 300 else first[:297] + "..."


def _permanent(error: BaseException) -> bool:
    """Whether trying again cannot help: the object is missing, or the credentials are refused."""
    if isinstance(error, FileNotFoundError | PermissionDeniedError | UnauthenticatedError):
        return True
    status = _status(error)
    return status is not None and 400 <= status < 500 and status not in (408, 429)


class _Truncated(Exception):
    """The stream ended before the object's size: the server went away mid-download."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _stream_to(
    store: ObjectStore, key: str, out_path: Path, progress: Progress, on_chunk: OnChunk | None, *, verify: bool
) -> str | None:
    """Write the object to `out_path`; the sha256 of what was written when `verify` (hashing costs a core's time)."""
    digest = hashlib.sha256() if verify else None
    result = obstore.get(store, key)
    size = result.meta.get("size")
    total = int(size) if size is not None else None
    progress.start(total)
    with out_path.open("wb") as out:
        for chunk in result.stream(min_chunk_size=CHUNK_BYTES):
            try:
                out.write(chunk)
            except OSError as exc:
                raise FetchError(
                    progress.uri, f"cannot write {out_path}: {exc.strerror or exc}; free space or raise `cacheSizeLimit`"
                ) from exc
            if digest is not None:
                digest.update(chunk)
            progress.advance(len(chunk))
            if on_chunk is not None:
                on_chunk(progress.done, total)
    if total is not None and progress.done != total:
        raise _Truncated(f"the connection closed after {progress.done} of {total} bytes")
    return None if digest is None else digest.hexdigest()


def download(
    uri: str,
    cache: Path,
    *,
    sha256: str | None = None,
    policy: RetryPolicy | None = None,
    progress_every_s: float = 5.0,
    on_chunk: OnChunk | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """The cached copy of remote `uri`, downloaded first when it is not in `cache` yet."""
    target = cached_path(uri, sha256, cache)
    if target.is_file():
        log.info("%s: in the cache at %s (no download)", uri, target)
        return target
    policy = policy or RetryPolicy()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(uri, f"cannot create the cache directory {target.parent}: {exc.strerror or exc}") from exc
    store, key = _open(uri, policy)
    progress = Progress(uri, progress_every_s)
    failures = 0
    while True:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            actual = _stream_to(store, key, tmp, progress, on_chunk, verify=sha256 is not None)
            if sha256 is not None and actual is not None and actual != sha256:
                raise DigestMismatch(uri, sha256, actual)
            os.replace(tmp, target)
            progress.finish(target)
            return target
        except FetchError:
            raise
        except Exception as exc:
            failures += 1
            why = reason(exc)
            if _permanent(exc) or failures >= policy.attempts:
                tries = "" if _permanent(exc) else f" (after {failures} attempts)"
                raise FetchError(uri, f"{why}{tries}") from exc
            delay = policy.backoff(failures)
            log.warning("fetching %s failed (%s); attempt %d of %d in %.1f s", uri, why, failures + 1, policy.attempts, delay)
            sleep(delay)
        finally:
            tmp.unlink(missing_ok=True)
