"""Giving memory freed by very large requests back to the OS (glibc; elsewhere these do nothing).

glibc keeps freed memory in its arenas, up to 8 per core, one taken by each thread that allocates, and after a
large buffer is freed it raises its mmap threshold, so later large buffers come from those arenas too: a handful of
64 MiB requests left the gateway's RSS at a high-water mark of about 1.6x its start for good (gRPC's threads read
them). Two arenas, a fixed 1 MiB mmap threshold (large buffers are mapped and unmapped, never kept) and a trim
after each large request give it back: measured with `conveyor bench fuzz` (README, "Fuzzing").
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Callable

__all__ = ["LARGE_REQUEST_BYTES", "LargeRequestTrimmer", "malloc_trim", "tune_malloc_for_large_requests"]

log = logging.getLogger(__name__)

#: Requests at least this long are followed by a trim.
LARGE_REQUEST_BYTES = 8 * 1024 * 1024
#: Buffers at least this long are mapped on their own, and unmapped when freed.
MMAP_THRESHOLD_BYTES = 1024 * 1024
#: mallopt's parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def _glibc() -> ctypes.CDLL | None:
    """The C library's allocator functions when they are glibc's (musl and macOS have no malloc_trim)."""
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _glibc()


def tune_malloc_for_large_requests(
    arenas: int | None = 2, mmap_threshold: int = MMAP_THRESHOLD_BYTES, trim_threshold: int | None = None
) -> bool:
    """Cap glibc's arenas (None: leave them) and fix its mmap threshold for this process, and its trim threshold when
    given (a fixed mmap threshold leaves it at 128 KiB: free memory above that at the heap's top goes back to the OS
    at each free); call it at start, before the servers' threads exist. False where the allocator is not glibc's."""
    if _LIBC is None:
        return False
    capped = arenas is None or _LIBC.mallopt(ctypes.c_int(_M_ARENA_MAX), ctypes.c_int(arenas))
    fixed = _LIBC.mallopt(ctypes.c_int(_M_MMAP_THRESHOLD), ctypes.c_int(mmap_threshold))
    trims = trim_threshold is None or _LIBC.mallopt(ctypes.c_int(_M_TRIM_THRESHOLD), ctypes.c_int(trim_threshold))
    return bool(capped and fixed and trims)


def malloc_trim() -> bool:
    """Give the free memory at the top and in the middle of every arena back to the OS; True when some was."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(ctypes.c_size_t(0)))


class LargeRequestTrimmer:
    """After a large request (answered or refused), one trim on a worker thread, once the request is freed.

    Trims are spaced at least `min_interval_s` apart, so a stream of large requests costs one trim a second.
    """

    def __init__(
        self,
        threshold_bytes: int = LARGE_REQUEST_BYTES,
        *,
        delay_s: float = 0.2,
        min_interval_s: float = 1.0,
        trim: Callable[[], bool] = malloc_trim,
    ) -> None:
        self.threshold_bytes = threshold_bytes
        self.delay_s = delay_s
        self.min_interval_s = min_interval_s
        self._trim = trim
        self._timer: asyncio.TimerHandle | None = None
        self._trimming = False
        self._noted_while_trimming = False
        self._last = -float("inf")
        self.trims = 0

    def note(self, size: int) -> None:
        """A request of `size` bytes has been handled (call from the event loop)."""
        if size < self.threshold_bytes:
            return
        if self._trimming:
            self._noted_while_trimming = True
        elif self._timer is None:
            self._schedule(asyncio.get_running_loop())

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        wait = max(self.delay_s, self._last + self.min_interval_s - time.monotonic())
        self._timer = loop.call_later(wait, self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._trimming = True
        self._last = time.monotonic()
        loop.run_in_executor(None, self._trim).add_done_callback(lambda future: self._done(loop, future))

    def _done(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[bool]) -> None:
        self._trimming = False
        self.trims += 1
        if not future.cancelled() and future.exception() is not None:
            log.debug("malloc_trim failed: %s", future.exception())
        if self._noted_while_trimming and not loop.is_closed():
            self._noted_while_trimming = False
            self._schedule(loop)

    def cancel(self) -> None:
        """Drop a trim not started yet (the server is stopping)."""
        self._noted_while_trimming = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
