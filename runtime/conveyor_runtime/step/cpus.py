"""How many CPUs a step may really use, to size its thread pools (ONNX Runtime intra-op threads, hook threads).

The node's core count is the wrong answer in a pod: a ``cpu: "2"`` step on a 64-core node would start ~64 threads
per pool. The budget is the smallest of: the CPUs this process may run on (affinity), the container's CPU quota
(cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), and the step's ``resources.cpu``; fractions round down (at
least 1), since a thread beyond the quota only waits for CFS throttling to end.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CpuBudget",
    "cgroup_cpu_limit",
    "cpu_budget",
    "cpu_count",
    "parse_cfs_quota",
    "parse_cpu_max",
    "parse_cpu_quantity",
    "step_cpu_budget",
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
#: Where cgroup v1 mounts the cpu controller, by distribution and runtime.
_V1_CPU_MOUNTS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m?)$")


@dataclass(frozen=True)
class CpuBudget:
    """Whole CPUs to size thread pools with (at least 1), and where that number came from (for the log)."""

    cpus: int
    reason: str


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 ``cpu.max`` (``"QUOTA PERIOD"``) as CPUs; None for ``max`` (no limit) or a malformed file."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs_quota(quota: str, period: str) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` as CPUs; None for ``-1`` (no limit)."""
    try:
        q, p = int(quota.strip()), int(period.strip())
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def parse_cpu_quantity(text: str) -> float:
    """A Kubernetes CPU quantity as CPUs: ``"2"`` -> 2.0, ``"1.5"`` -> 1.5, ``"500m"`` -> 0.5."""
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"not a CPU quantity like '2' or '500m': {text!r}")
    value = float(match.group(1))
    return value / 1000 if match.group(2) else value


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _upwards(base: Path, cgroup_path: str) -> list[Path]:
    """``base/a/b``, ``base/a``, ``base``: a limit on any ancestor cgroup applies too."""
    parts = [p for p in cgroup_path.split("/") if p]
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> tuple[float, str] | None:
    """The tightest CPU quota on this process's cgroups (v2 and v1), as (CPUs, the file that sets it); None if none."""
    found: list[tuple[float, str]] = []
    for line in (_read(self_cgroup) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            for directory in _upwards(root, path):
                text = _read(directory / "cpu.max") or ""
                limit = parse_cpu_max(text)
                if limit is not None:
                    found.append((limit, f"cgroup v2 {directory / 'cpu.max'} = {text.strip()}"))
        elif "cpu" in controllers.split(","):
            for mount in _V1_CPU_MOUNTS:
                for directory in _upwards(root / mount, path):
                    quota = _read(directory / "cpu.cfs_quota_us") or ""
                    period = _read(directory / "cpu.cfs_period_us") or ""
                    limit = parse_cfs_quota(quota, period)
                    if limit is not None:
                        found.append((limit, f"cgroup v1 {directory}/cpu.cfs_quota_us = {quota.strip()}/{period.strip()}"))
    return min(found) if found else None


def cpu_count() -> int:
    """CPUs this process may run on (affinity-aware; the node's count where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_budget(resources_cpu: str | None, *, available: int, quota: tuple[float, str] | None) -> CpuBudget:
    """The smallest of `available` CPUs, the cgroup `quota` (CPUs, source) and ``resources.cpu``, in whole CPUs."""
    candidates: list[tuple[float, str]] = [(float(available), f"{available} CPU(s) this process may run on")]
    if quota is not None:
        candidates.append(quota)
    if resources_cpu:
        candidates.append((parse_cpu_quantity(resources_cpu), f"resources.cpu {resources_cpu!r}"))
    cpus, reason = min(candidates)
    whole = max(1, math.floor(cpus))
    if whole != cpus:
        reason += f" (rounded down to {whole})" if cpus >= 1 else " (at least 1)"
    return CpuBudget(whole, reason)


def step_cpu_budget(resources_cpu: str | None) -> CpuBudget:
    """`cpu_budget` for this process: its affinity and its cgroups' quota."""
    return cpu_budget(resources_cpu, available=cpu_count(), quota=cgroup_cpu_limit())
