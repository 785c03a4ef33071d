"""A step's CPU budget: cgroup v2/v1 quota parsers, the cgroup walk on fake trees, and the smallest-bound rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor_runtime.step import CpuBudget, cgroup_cpu_limit, cpu_budget, parse_cfs_quota, parse_cpu_max, parse_cpu_quantity


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2.0),
        ("150000 100000", 1.5),
        ("50000 100000", 0.5),
        ("300000", 3.0),  # period omitted: the kernel's default 100000
        ("", None),
        ("lots 100000", None),
        ("0 100000", None),
    ],
)
def test_cpus_parse_cgroup_v2_cpu_max(text: str, cpus: float | None) -> None:
    assert parse_cpu_max(text) == cpus


@pytest.mark.parametrize(
    ("quota", "period", "cpus"),
    [("-1\n", "100000\n", None), ("200000\n", "100000\n", 2.0), ("25000", "50000", 0.5), ("x", "100000", None)],
)
def test_cpus_parse_cgroup_v1_cfs_quota(quota: str, period: str, cpus: float | None) -> None:
    assert parse_cfs_quota(quota, period) == cpus


@pytest.mark.parametrize(("text", "cpus"), [("2", 2.0), ("1.5", 1.5), ("500m", 0.5), ("2500m", 2.5)])
def test_cpus_parse_kubernetes_cpu_quantities(text: str, cpus: float) -> None:
    assert parse_cpu_quantity(text) == cpus


def test_cpus_parse_cpu_quantity_rejects_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="not a CPU quantity"):
        parse_cpu_quantity("two")


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    ("files", "cpus", "source"),
    [
        pytest.param({"self": "0::/\n", "fs/cpu.max": "200000 100000\n"}, 2.0, "cpu.max = 200000 100000", id="v2-container"),
        pytest.param(
            {
                "self": "0::/kubepods/pod1/c1\n",
                "fs/kubepods/cpu.max": "max 100000",
                "fs/kubepods/pod1/cpu.max": "300000 100000",
                "fs/kubepods/pod1/c1/cpu.max": "max 100000",
            },
            3.0,
            "pod1/cpu.max",
            id="v2-tightest-up-the-tree",
        ),
        pytest.param(
            {
                "self": "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
                "fs/cpu,cpuacct/cpu.cfs_quota_us": "150000\n",
                "fs/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            },
            1.5,
            "cfs_quota_us = 150000/100000",
            id="v1-at-the-mount-when-the-host-path-is-absent",
        ),
    ],
)
def test_cpus_cgroup_limit_is_read_from_v2_and_v1_trees(tmp_path: Path, files: dict[str, str], cpus: float, source: str) -> None:
    _tree(tmp_path, files)
    limit = cgroup_cpu_limit(tmp_path / "fs", tmp_path / "self")
    assert limit is not None and limit[0] == cpus and source in limit[1]


def test_cpus_no_quota_or_no_cgroup_files_is_no_limit(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {"self": "1:cpu:/\n0::/\n", "fs/cpu/cpu.cfs_quota_us": "-1\n", "fs/cpu/cpu.cfs_period_us": "100000\n"},
    )
    assert cgroup_cpu_limit(tmp_path / "fs", tmp_path / "self") is None
    assert cgroup_cpu_limit(tmp_path / "nothing", tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("resources_cpu", "available", "quota", "expected"),
    [
        (None, 64, None, CpuBudget(64, "64 CPU(s) this process may run on")),
        ("2", 64, None, CpuBudget(2, "resources.cpu '2'")),
        ("4", 64, (1.5, "cgroup quota"), CpuBudget(1, "cgroup quota (rounded down to 1)")),
        ("500m", 64, None, CpuBudget(1, "resources.cpu '500m' (at least 1)")),
        ("8", 4, (6.0, "cgroup quota"), CpuBudget(4, "4 CPU(s) this process may run on")),
    ],
)
def test_cpus_budget_is_the_smallest_bound_in_whole_cpus(
    resources_cpu: str | None, available: int, quota: tuple[float, str] | None, expected: CpuBudget
) -> None:
    assert cpu_budget(resources_cpu, available=available, quota=quota) == expected
