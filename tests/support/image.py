"""conveyor:dev, the checkout's Dockerfile built by scripts/build-image.sh (buildah) and loaded into a cluster's containerd.

Built and loaded once per cluster per session; a warm rebuild reuses every cached layer and skips the import when the
cluster already has that image, so calling this from several test modules costs seconds.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.cluster import Cluster, ClusterError

__all__ = ["BUILD_SCRIPT", "IMAGE", "ensure_image"]

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-image.sh"
#: What pods name; the node resolves it to docker.io/library/conveyor:dev, the name the script imports it under.
IMAGE = "conveyor:dev"
#: Cold: debootstrap of the base (~2 min) and every wheel installed (~4 min) on 2 shared cores, with margin.
BUILD_TIMEOUT = 2400.0

_loaded: set[str] = set()


def ensure_image(cluster: Cluster) -> str:
    """Build the image and load it into `cluster` (once per cluster); returns the name pods use."""
    name = cluster.config.name
    if name not in _loaded:
        env = {**os.environ, **cluster.config.env()}
        try:
            done = subprocess.run(
                ["bash", str(BUILD_SCRIPT)], env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"scripts/build-image.sh ran past {BUILD_TIMEOUT:.0f}s") from exc
        if done.returncode != 0:
            raise ClusterError(f"scripts/build-image.sh exited {done.returncode}:\n{done.stderr[-4000:]}")
        _loaded.add(name)
    return IMAGE
