"""`conveyor bench peers --others paused`: the systems not being measured are stopped for the turn, whole trees."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor_benchmarks.cpu import cpu_seconds
from conveyor_benchmarks.peers.process_tree import descendants, paused

# A parent that starts a child; both burn CPU until killed (a server and, say, its raylet).
_TREE = (
    "import subprocess, sys\n"
    "subprocess.Popen([sys.executable, '-c', 'while True: pass'])\n"
    "while True: pass\n"
)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def busy_tree() -> Iterator[subprocess.Popen[bytes]]:
    parent = subprocess.Popen([sys.executable, "-c", _TREE])
    try:
        deadline = time.monotonic() + 10
        while len(descendants(parent.pid)) < 2:
            assert time.monotonic() < deadline, "the child process did not start"
            time.sleep(0.05)
        yield parent
    finally:
        for pid in reversed(descendants(parent.pid)):
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        parent.wait(timeout=10)


def test_paused_stops_a_whole_tree_for_the_block_and_continues_it_after(busy_tree: subprocess.Popen[bytes]) -> None:
    pids = descendants(busy_tree.pid)
    with paused([busy_tree.pid]) as stopped:
        assert sorted(stopped) == sorted(pids)
        time.sleep(0.2)  # let the stops land
        assert [_state(pid) for pid in pids] == ["T"] * len(pids)
        before = {pid: cpu_seconds(pid) for pid in pids}
        time.sleep(0.5)
        assert {pid: cpu_seconds(pid) for pid in pids} == before, "a paused process used CPU"
    time.sleep(0.2)
    assert all(_state(pid) != "T" for pid in pids)
    used = {pid: cpu_seconds(pid) for pid in pids}
    time.sleep(0.5)
    assert all(cpu_seconds(pid) > used[pid] for pid in pids), "a process stayed stopped after the block"


def test_paused_continues_the_tree_when_the_block_fails(busy_tree: subprocess.Popen[bytes]) -> None:
    pids = descendants(busy_tree.pid)
    with pytest.raises(RuntimeError), paused([busy_tree.pid]):
        raise RuntimeError("the level failed")
    time.sleep(0.2)
    assert all(_state(pid) != "T" for pid in pids)
