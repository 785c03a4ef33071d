"""The local runner's pure parts: restart back-off and long output lines."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor_runtime.local.output import LineCutter
from conveyor_runtime.local.replica import RestartBackoff

# --- restart back-off -------------------------------------------------------------------------------------------


def _crash_after(backoff: RestartBackoff, clock: list[float], ran_s: float) -> float:
    """A replica started at clock[0] crashes `ran_s` later; returns the wait, and moves the clock past the restart."""
    started = clock[0]
    delay = backoff.delay(started_at=started, exited_at=started + ran_s)
    clock[0] = started + ran_s + delay
    return delay


def test_restart_backoff_doubles_while_a_replica_crashes_quickly() -> None:
    backoff, clock = RestartBackoff(first_s=0.5, max_s=15.0, stable_s=60.0), [1000.0]
    assert [_crash_after(backoff, clock, 1.0) for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]


def test_restart_backoff_resets_after_crashes_far_apart() -> None:
    backoff, clock = RestartBackoff(first_s=0.5, max_s=15.0, stable_s=60.0), [1000.0]
    assert [_crash_after(backoff, clock, 3600.0) for _ in range(6)] == [0.5] * 6


def test_restart_backoff_resets_once_a_replica_ran_stably_after_a_crash_loop() -> None:
    backoff, clock = RestartBackoff(first_s=0.5, max_s=15.0, stable_s=60.0), [0.0]
    loop = [_crash_after(backoff, clock, 2.0) for _ in range(7)]
    assert loop[-1] == 15.0
    assert _crash_after(backoff, clock, 59.9) == 15.0  # just short of stable: still a crash loop
    assert _crash_after(backoff, clock, 60.0) == 0.5  # ran stably: starts over
    assert _crash_after(backoff, clock, 1.0) == 1.0  # and a quick crash after that doubles from there


@pytest.mark.parametrize("settings", [{"first_s": 0.0}, {"max_s": 0.1}, {"stable_s": -1.0}])
def test_restart_backoff_rejects_unusable_settings(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(settings))):
        RestartBackoff(**settings)


# --- output lines -----------------------------------------------------------------------------------------------


def test_line_cutter_splits_chunks_into_lines_across_chunk_boundaries() -> None:
    cutter = LineCutter(max_bytes=100)
    assert cutter.feed(b"one\ntw") == ["one"]
    assert cutter.feed(b"o\r\n\nthr") == ["two", ""]
    assert cutter.feed(b"ee") == []
    assert cutter.flush() == ["three"]
    assert cutter.flush() == []


def test_line_cutter_cuts_a_long_line_and_says_how_long_it_was() -> None:
    cutter = LineCutter(max_bytes=10)
    lines = cutter.feed(b"x" * 25) + cutter.feed(b"y" * 1_000_000) + cutter.feed(b"z\nnext\n")
    assert lines == ["xxxxxxxxxx ... [line cut: 1000026 bytes, the first 10 shown]", "next"]


def test_line_cutter_keeps_at_most_max_bytes_of_an_endless_line() -> None:
    cutter = LineCutter(max_bytes=1000)
    for _ in range(1000):
        assert cutter.feed(b"a" * 65536) == []
    assert cutter.buffered <= 1000
    assert cutter.flush() == ["a" * 1000 + f" ... [line cut: {1000 * 65536} bytes, the first 1000 shown]"]
