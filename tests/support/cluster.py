"""A real single-node cluster from ``scripts/cluster.sh``, driven from tests, and the host state it must restore.

``Cluster`` brings a named cluster up and down and runs its kubectl; ``HostState.capture`` records what
``down`` has to leave as it found it (mounts, network namespaces, links, routes, iptables rules, cgroups,
listening sockets, kernel settings).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CLUSTER_SCRIPT",
    "Cluster",
    "ClusterConfig",
    "ClusterError",
    "HostState",
    "diff",
    "local_images",
    "missing_prerequisites",
    "process_alive",
    "processes_started_for",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO_ROOT / "scripts" / "cluster.sh"
IMAGES_SCRIPT = REPO_ROOT / "scripts" / "cluster" / "build-images.sh"
#: `up` builds binaries on a cold machine (~10 min on 2 cores); warm it takes seconds.
UP_TIMEOUT = 1800.0
DOWN_TIMEOUT = 300.0


class ClusterError(RuntimeError):
    """scripts/cluster.sh failed, or kubectl did."""


def missing_prerequisites() -> str | None:
    """Why this machine cannot run the cluster (not root, no namespaces), or None when it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (network namespaces, mounts, cgroups)"
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (util-linux / iproute2)"
    probe = subprocess.run(["unshare", "--mount", "--net", "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"cannot create mount and network namespaces: {probe.stderr.strip() or probe.returncode}"
    return None


def local_images() -> dict[str, str]:
    """Short name ('pause', 'busybox') -> image name of the cluster's local images (built once)."""
    out = subprocess.run(["bash", str(IMAGES_SCRIPT)], capture_output=True, text=True, check=True).stdout
    images: dict[str, str] = {}
    for line in out.splitlines():
        name = line.split()[0]
        images[name.rsplit("/", 1)[-1].split(":", 1)[0]] = name
    return images


@dataclass(frozen=True)
class ClusterConfig:
    """The parameters that keep two clusters on one machine apart."""

    name: str
    link_cidr: str
    pod_cidr: str
    service_cidr: str

    def env(self) -> dict[str, str]:
        return {
            "CONVEYOR_CLUSTER_NAME": self.name,
            "CONVEYOR_CLUSTER_LINK_CIDR": self.link_cidr,
            "CONVEYOR_CLUSTER_POD_CIDR": self.pod_cidr,
            "CONVEYOR_CLUSTER_SERVICE_CIDR": self.service_cidr,
        }

    @property
    def cgroup(self) -> str:
        return f"conveyor-cluster-{self.name}"

    @property
    def host_link(self) -> str:
        return f"cv-{self.name}"


@dataclass
class Cluster:
    """One cluster of scripts/cluster.sh; ``up`` and ``down`` are the script's own commands."""

    config: ClusterConfig
    kubeconfig: Path | None = None
    kubectl_path: Path | None = None

    def _script(self, command: str, timeout: float) -> str:
        """Run `scripts/cluster.sh COMMAND`; its progress log streams to stderr (``pytest -s`` shows it live)."""
        env = {**os.environ, **self.config.env()}
        with subprocess.Popen(
            ["bash", str(CLUSTER_SCRIPT), command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            try:
                log: deque[str] = deque(maxlen=60)
                for line in proc.stderr:
                    sys.stderr.write(line)
                    log.append(line)
                stdout = proc.stdout.read()
                returncode = proc.wait()
            finally:
                timer.cancel()
        if returncode != 0:
            raise ClusterError(f"scripts/cluster.sh {command} exited {returncode}:\n{''.join(log)}{stdout[-2000:]}")
        return stdout

    def up(self) -> Path:
        """Bring the cluster up (idempotent); returns the kubeconfig path the script printed."""
        self.kubeconfig = Path(self._script("up", UP_TIMEOUT).strip().splitlines()[-1])
        env_lines = self._script("env", 60).splitlines()
        path_line = next(line for line in env_lines if line.startswith("export PATH="))
        self.kubectl_path = Path(path_line.removeprefix("export PATH=").split(":", 1)[0]) / "kubectl"
        return self.kubeconfig

    def down(self) -> None:
        self._script("down", DOWN_TIMEOUT)

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 120.0, check: bool = True) -> str:
        """Run kubectl against this cluster; returns stdout (raises ClusterError when check and it fails)."""
        if self.kubeconfig is None or self.kubectl_path is None:
            raise ClusterError("cluster is not up: call up() first")
        proc = subprocess.run(
            [
                str(self.kubectl_path),
                "--kubeconfig",
                str(self.kubeconfig),
                f"--cache-dir={self.kubeconfig.parent / 'kube-cache'}",
                *args,
            ],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def apply(self, manifest: str) -> None:
        self.kubectl("apply", "-f", "-", stdin=manifest)

    def processes(self) -> dict[int, str]:
        """Every process in the cluster's cgroups now (pid -> start time), pods and shims included."""
        found: dict[int, str] = {}
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            root = hierarchy / self.config.cgroup
            if not root.is_dir():
                continue
            for procs in root.rglob("cgroup.procs"):
                for line in procs.read_text().split():
                    start = _start_time(int(line))
                    if start is not None:
                        found[int(line)] = start
        return found

    def net_namespaces(self) -> set[str]:
        """The network namespaces (nsfs inode links) the cluster's processes are in."""
        spaces: set[str] = set()
        for pid in self.processes():
            try:
                spaces.add(os.readlink(f"/proc/{pid}/ns/net"))
            except OSError:
                continue
        return spaces


def _start_time(pid: int) -> str | None:
    """A process's start time (field 22 of /proc/PID/stat): with the pid, it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, start_time: str) -> bool:
    """The process is running (a zombie has left its cgroups and waits only for its parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] == start_time and fields[0] != "Z"


def processes_started_for(name: str) -> set[int]:
    """Live processes whose environment says scripts/cluster.sh started them for cluster `name`.

    Everything the script runs inherits its CONVEYOR_CLUSTER_NAME, cgroup or not (pod processes get
    the environment their image and pod give them instead: they are found by cgroup).
    """
    marker = f"CONVEYOR_CLUSTER_NAME={name}".encode()
    found: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.add(int(proc.name))
    return found


def _run(*argv: str) -> list[str]:
    if shutil.which(argv[0]) is None:
        return []
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return proc.stdout.splitlines()


# Kernel settings that move by themselves (counters, random values, the clock of allocations).
_VOLATILE_SYSCTL = re.compile(
    r"^(kernel\.random\.|kernel\.ns_last_pid|fs\.dentry-state|fs\.inode-|fs\.file-nr|kernel\.pty\.nr"
    r"|fs\.aio-nr|net\.netfilter\.nf_conntrack_count|fs\.quota\.|kernel\.sched_domain|vm\.stat"
    r"|net\.ipv[46]\.conf\.(?P<iface>[^.]+)\.|net\.ipv6\.neigh\.(?P<iface6>[^.]+)\.|net\.ipv4\.neigh\.(?P<iface4>[^.]+)\.)"
)


def _sysctls() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in _run("sysctl", "-a"):
        key, sep, value = line.partition(" = ")
        if not sep:
            continue
        match = _VOLATILE_SYSCTL.match(key)
        if match is None:
            values[key] = value
        elif iface := match.group("iface") or match.group("iface6") or match.group("iface4"):
            # Per-interface settings come and go with links (checked as links); keep the shared ones.
            if iface in ("all", "default"):
                values[key] = value
    return values


def _mounts() -> list[str]:
    lines = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        # root, mount point, fs type, source: not the ids, which differ from boot to boot.
        lines.append(" ".join([fields[3], fields[4], fields[sep + 1], fields[sep + 2]]))
    return sorted(lines)


def _listening() -> dict[str, set[int]]:
    """Listening TCP and UDP sockets in the host's network namespace -> pids holding them."""
    sockets: dict[str, set[int]] = {}
    for line in _run("ss", "-ltnupH"):
        fields = line.split()
        if len(fields) < 5:
            continue
        key = f"{fields[0]} {fields[4]}"
        sockets.setdefault(key, set()).update(int(p) for p in re.findall(r"pid=(\d+)", line))
    return sockets


def _net_namespaces_in_use() -> set[str]:
    """Every network namespace a process is in or a mount holds open."""
    spaces: set[str] = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                spaces.add(os.readlink(proc / "ns" / "net"))
            except OSError:
                continue
    return spaces


@dataclass(frozen=True)
class HostState:
    """What a cluster may touch on the host, as one snapshot."""

    mounts: list[str]
    net_namespaces: set[str]
    links: list[str]
    routes: list[str]
    iptables: list[str]
    cgroups: list[str]
    listening: Mapping[str, set[int]] = field(default_factory=dict)
    sysctls: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def capture(cls) -> HostState:
        links = sorted(line.split(":")[1].strip().split("@")[0] for line in _run("ip", "-o", "link", "show"))
        routes = sorted(line.strip() for family in ("-4", "-6") for line in _run("ip", family, "route", "show", "table", "all"))
        iptables = [
            f"{tool}: {line}"
            for tool in ("iptables-save", "ip6tables-save", "iptables-legacy-save", "ip6tables-legacy-save")
            for line in _run(tool)
            if line and not line.startswith("#")
        ]
        cgroups = sorted(
            str(path)
            for hierarchy in Path("/sys/fs/cgroup").iterdir()
            if hierarchy.is_dir()
            for path in hierarchy.iterdir()
            if path.is_dir()
        )
        return cls(
            mounts=_mounts(),
            net_namespaces=_net_namespaces_in_use(),
            links=links,
            routes=routes,
            iptables=iptables,
            cgroups=cgroups,
            listening=_listening(),
            sysctls=_sysctls(),
        )


def diff(before: list[str], after: list[str]) -> str:
    """Lines added (+) and removed (-), for assertion messages."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    return "\n".join([*(f"+ {line}" for line in added), *(f"- {line}" for line in removed)])
