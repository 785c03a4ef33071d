"""A replica's output, line by line: long lines are cut with a marker, and reading never stops before EOF.

A child that writes to a pipe nobody reads blocks once the pipe's buffer is full, so the reader must outlive
any line (`StreamReader.readline` gives up on lines over its 64 KiB limit) and any failure of where lines go.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

__all__ = ["MAX_LINE_BYTES", "LineCutter", "forward_lines"]

log = logging.getLogger(__name__)

#: How much of one output line is forwarded; the rest is dropped and counted in the marker.
MAX_LINE_BYTES = 16 * 1024
#: How much is read from the pipe at a time.
_CHUNK_BYTES = 64 * 1024


class LineCutter:
    """Splits a byte stream into text lines, keeping at most `max_bytes` of each (memory stays bounded)."""

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes: must be >= 1, got {max_bytes}")
        self.max_bytes = max_bytes
        self._head = bytearray()
        self._length = 0

    @property
    def buffered(self) -> int:
        """Bytes held for the line not yet ended."""
        return len(self._head)

    def feed(self, data: bytes) -> list[str]:
        """The lines that `data` ends (without their line break)."""
        lines: list[str] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            self._take(data, start, len(data) if end < 0 else end)
            if end < 0:
                return lines
            lines.append(self._finish())
            start = end + 1

    def flush(self) -> list[str]:
        """The last line, if the stream ended without a line break."""
        return [self._finish()] if self._length else []

    def _take(self, data: bytes, start: int, end: int) -> None:
        room = self.max_bytes - len(self._head)
        if room > 0:
            self._head += data[start : min(end, start + room)]
        self._length += end - start

    def _finish(self) -> str:
        text = self._head.decode(errors="replace").rstrip("\r")
        if self._length > len(self._head):
            text += f" ... [line cut: {self._length} bytes, the first {len(self._head)} shown]"
        self._head = bytearray()
        self._length = 0
        return text


async def forward_lines(stream: asyncio.StreamReader, emit: Callable[[str], None], *, max_bytes: int = MAX_LINE_BYTES) -> None:
    """Call `emit` with each line of `stream` until EOF. A failing `emit` is logged once and reading goes on, so
    the writer never blocks on a full pipe."""
    cutter = LineCutter(max_bytes)
    failed = False
    while True:
        data = await stream.read(_CHUNK_BYTES)
        lines = cutter.feed(data) if data else cutter.flush()
        for line in lines:
            try:
                emit(line)
            except Exception:
                if not failed:
                    log.warning("cannot forward a replica's output; still reading it", exc_info=True)
                failed = True
        if not data:
            return
