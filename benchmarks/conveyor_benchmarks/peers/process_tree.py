"""A server's processes, found from /proc: the one we started and all its descendants (Ray's raylet, GCS and
workers; tritonserver and its Python-backend stubs), the CPU seconds they have used, and pausing them (`paused`)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..cpu import cpu_seconds

__all__ = ["descendants", "parse_ppid", "paused", "tree_cpu_seconds"]


def parse_ppid(stat: str) -> int:
    """The parent pid in a /proc/PID/stat line (the command name may hold spaces and parentheses)."""
    return int(stat.rsplit(")", 1)[1].split()[1])


def _parents(proc: Path) -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = parse_ppid((entry / "stat").read_text())
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
    return parents


def descendants(root: int, proc: Path = Path("/proc")) -> list[int]:
    """`root` and every live process below it."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents(proc).items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_cpu_seconds(roots: list[int]) -> dict[int, float]:
    """CPU seconds of each live process under `roots`, by pid (diff two snapshots: processes come and go)."""
    return {pid: cpu_seconds(pid) for root in roots for pid in descendants(root)}


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue  # exited while we looked


@contextmanager
def paused(roots: list[int], proc: Path = Path("/proc")) -> Iterator[list[int]]:
    """Every process under `roots` stopped (SIGSTOP) inside the block and continued (SIGCONT) after it, whatever the
    block raises; yields the stopped pids. A tree is listed again after stopping it until no new process appears (a
    process may fork before its stop arrives)."""
    stopped: set[int] = set()
    try:
        for _ in range(5):
            found = [pid for root in roots for pid in descendants(root, proc) if pid not in stopped]
            if not found:
                break
            _signal(found, signal.SIGSTOP)
            stopped.update(found)
        yield sorted(stopped)
    finally:
        _signal(sorted(stopped), signal.SIGCONT)
