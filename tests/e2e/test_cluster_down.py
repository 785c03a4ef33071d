"""`scripts/cluster.sh down` leaves the machine as `up` found it, and `up` never touches the host's settings.

A cluster of its own (name and subnets apart from the shared one, which may be up beside it) is brought up,
runs a pod, and goes down; the host is captured before, while up, and after.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cluster import (
    Cluster,
    ClusterConfig,
    HostState,
    diff,
    local_images,
    process_alive,
    processes_started_for,
)

CONFIG = ClusterConfig(name="e2e-down", link_cidr="10.243.20.0/30", pod_cidr="10.244.20.0/24", service_cidr="10.245.20.0/24")


def _describe(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")).strip()
    except OSError:
        return "(gone)"


@dataclass(frozen=True)
class Lifecycle:
    before: HostState
    up: HostState
    after: HostState
    #: pid -> start time of every process in the cluster's cgroups while it was up.
    processes: dict[int, str]
    node_namespaces: set[str]


@pytest.fixture(scope="module")
def lifecycle() -> Iterator[Lifecycle]:
    cluster = Cluster(CONFIG)
    before = HostState.capture()
    try:
        cluster.up()
        cluster.kubectl(
            "run", "sleeper", f"--image={local_images()['busybox']}", "--image-pull-policy=Never",
            "--restart=Never", "--", "sleep", "3600",
        )  # fmt: skip
        cluster.kubectl("wait", "--for=condition=Ready", "pod/sleeper", "--timeout=120s")
        up = HostState.capture()
        processes = cluster.processes()
        node_namespaces = cluster.net_namespaces()
    finally:
        cluster.down()
    yield Lifecycle(before, up, HostState.capture(), processes, node_namespaces)


def test_up_adds_only_its_link_routes_and_cgroups_to_the_host(lifecycle: Lifecycle) -> None:
    before, up = lifecycle.before, lifecycle.up
    assert set(up.links) - set(before.links) == {CONFIG.host_link}, diff(before.links, up.links)
    added_routes = set(up.routes) - set(before.routes)
    assert all(CONFIG.host_link in route for route in added_routes), diff(before.routes, up.routes)
    assert {route.split()[0] for route in added_routes} >= {CONFIG.pod_cidr, CONFIG.service_cidr}
    added_cgroups = set(up.cgroups) - set(before.cgroups)
    assert added_cgroups and all(c.endswith("/" + CONFIG.cgroup) for c in added_cgroups), added_cgroups
    assert up.mounts == before.mounts, diff(before.mounts, up.mounts)
    assert up.iptables == before.iptables, diff(before.iptables, up.iptables)


def test_up_changes_no_host_kernel_setting(lifecycle: Lifecycle) -> None:
    before, up = lifecycle.before.sysctls, lifecycle.up.sysctls
    changed = {key: (before.get(key), up.get(key)) for key in before.keys() | up.keys() if before.get(key) != up.get(key)}
    assert changed == {}


def test_up_listens_on_no_host_port(lifecycle: Lifecycle) -> None:
    cluster_pids = set(lifecycle.processes)
    assert len(cluster_pids) >= 10, "expected the cluster's processes (8 components, shims, pods) in its cgroups"
    held = {sock: pids & cluster_pids for sock, pids in lifecycle.up.listening.items() if pids & cluster_pids}
    assert held == {}


def test_down_stops_every_process_the_cluster_ran(lifecycle: Lifecycle) -> None:
    alive = {pid: _describe(pid) for pid, start in lifecycle.processes.items() if process_alive(pid, start)}
    assert alive == {}
    assert processes_started_for(CONFIG.name) == set()


def test_down_removes_the_node_and_pod_network_namespaces(lifecycle: Lifecycle) -> None:
    assert lifecycle.node_namespaces - lifecycle.before.net_namespaces, "the node had no namespace of its own"
    assert lifecycle.node_namespaces & lifecycle.after.net_namespaces == set()


def test_down_leaves_mounts_links_routes_iptables_cgroups_and_sysctls_as_before(lifecycle: Lifecycle) -> None:
    before, after = lifecycle.before, lifecycle.after
    assert after.mounts == before.mounts, diff(before.mounts, after.mounts)
    assert after.links == before.links, diff(before.links, after.links)
    assert after.routes == before.routes, diff(before.routes, after.routes)
    assert after.iptables == before.iptables, diff(before.iptables, after.iptables)
    assert after.cgroups == before.cgroups, diff(before.cgroups, after.cgroups)
    assert dict(after.sysctls) == dict(before.sysctls)


def test_down_leaves_listening_sockets_as_before(lifecycle: Lifecycle) -> None:
    # The machine is shared: other programs may open ports meanwhile. Any socket that is new
    # since `before` must belong to one of them, not to a process the script started.
    new = {sock: pids for sock, pids in lifecycle.after.listening.items() if sock not in lifecycle.before.listening}
    ours = set(lifecycle.processes) | processes_started_for(CONFIG.name)
    assert {sock: pids for sock, pids in new.items() if pids & ours} == {}
