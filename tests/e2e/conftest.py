"""The end-to-end tier: a real single-node cluster (scripts/cluster.sh) with real pods.

It runs only when asked, by naming it (``pytest tests/e2e``) or with ``CONVEYOR_E2E=1``: a cold start
builds the node binaries (~10 min on 2 cores). It is skipped, saying why, where it cannot run: not root,
or no mount and network namespaces.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster, ClusterConfig, missing_prerequisites

E2E_DIR = Path(__file__).resolve().parent



def _e2e_cluster() -> ClusterConfig:
    """The shared cluster of this tier: its own name and subnets, apart from a developer's default cluster.

    CONVEYOR_E2E_CLUSTER (name, default e2e) and CONVEYOR_E2E_NET (N in 10.243.N.0/30, 10.244.N.0/24,
    10.245.N.0/24; default 10) let two people run the tier side by side; 20 is taken by test_cluster_down.
    """
    net = int(os.environ.get("CONVEYOR_E2E_NET", "10"))
    if not 0 <= net <= 255 or net == 20:
        raise pytest.UsageError(f"CONVEYOR_E2E_NET must be 0-255 and not 20 (test_cluster_down's), got {net}")
    return ClusterConfig(
        name=os.environ.get("CONVEYOR_E2E_CLUSTER", "e2e"),
        link_cidr=f"10.243.{net}.0/30",
        pod_cidr=f"10.244.{net}.0/24",
        service_cidr=f"10.245.{net}.0/24",
    )


E2E_CLUSTER = _e2e_cluster()


def _asked_for(config: pytest.Config) -> bool:
    if os.environ.get("CONVEYOR_E2E") == "1":
        return True
    for arg in config.args:
        path = Path(arg.split("::", 1)[0]).resolve()
        if path == E2E_DIR or E2E_DIR in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if E2E_DIR in Path(str(item.path)).parents]
    if not mine:
        return
    if not _asked_for(config):
        reason = "e2e tier (real cluster) runs only when asked: pytest tests/e2e, or CONVEYOR_E2E=1"
    elif (why := missing_prerequisites()) is not None:
        reason = f"e2e tier needs a machine that can run a node: {why}"
    else:
        return
    for item in mine:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The tier's shared cluster: up once per session (or reused when up), down at the end unless
    CONVEYOR_E2E_KEEP=1 keeps it for the next run."""
    shared = Cluster(E2E_CLUSTER)
    keep = os.environ.get("CONVEYOR_E2E_KEEP") == "1"
    try:
        shared.up()
        yield shared
    finally:
        if not keep:
            shared.down()
