"""Pytest fixtures for a real Kubernetes control plane (load via ``pytest_plugins``).

``control_plane`` FAILS (never skips) when the binaries are missing: run scripts/build-control-plane.sh.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterator

import pytest

from tests.support.control_plane import ControlPlane, ControlPlaneError

logger = logging.getLogger(__name__)

# Variables that could point clients at some other cluster during the session.
_ISOLATED_ENV = ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")
# Client libraries that read $KUBECONFIG once, at import time, into this module global
# (kopf's login_via_client uses it through load_kube_config()).
_DEFAULT_LOCATION_MODULES = ("kubernetes.config.kube_config", "kubernetes_asyncio.config.kube_config")
_DEFAULT_LOCATION_ATTR = "KUBE_CONFIG_DEFAULT_LOCATION"


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """A session-wide etcd + kube-apiserver (+ controller-manager if built).

    While it is up, ``KUBECONFIG`` points at its throwaway kubeconfig (the
    in-cluster variables are hidden, and the kubernetes clients' import-time
    default kubeconfig location is redirected too), so kopf and the kubernetes
    client use it and never the machine's own config.
    """
    cp = ControlPlane()
    error: str | None = None
    try:
        cp.start()
    except ControlPlaneError as exc:
        error = str(exc)
    if error is not None:
        pytest.fail(error, pytrace=False)

    saved_env = {name: os.environ.get(name) for name in _ISOLATED_ENV}
    saved_defaults: dict[str, object] = {}
    try:
        for name in _ISOLATED_ENV:
            os.environ.pop(name, None)
        os.environ["KUBECONFIG"] = str(cp.kubeconfig_path)
        for module_name in _DEFAULT_LOCATION_MODULES:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            saved_defaults[module_name] = getattr(module, _DEFAULT_LOCATION_ATTR)
            setattr(module, _DEFAULT_LOCATION_ATTR, str(cp.kubeconfig_path))
        yield cp
    finally:
        try:
            for module_name, value in saved_defaults.items():
                setattr(importlib.import_module(module_name), _DEFAULT_LOCATION_ATTR, value)
            for name, env_value in saved_env.items():
                if env_value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = env_value
        finally:
            cp.stop()
