"""A throwaway, real Kubernetes control plane (etcd + kube-apiserver [+ controller-manager]).

Binaries come from ``scripts/build-control-plane.sh``; nothing here reads ~/.kube/config.
"""

from __future__ import annotations

import atexit
import base64
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-control-plane.sh"
# Keep in sync with the default in scripts/build-control-plane.sh (used only if
# the script itself cannot be asked for its bin dir).
DEFAULT_K8S_VERSION = "v1.36.3"

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "conveyor-test-admin"


class ControlPlaneError(RuntimeError):
    """The control plane could not be located, started or reached."""


def default_bin_dir() -> Path:
    """Where ``scripts/build-control-plane.sh`` puts (or would put) the binaries."""
    if BUILD_SCRIPT.is_file():
        try:
            out = subprocess.run(
                ["bash", str(BUILD_SCRIPT), "--print-bin-dir"],
                check=True,
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
            if out:
                return Path(out)
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("could not ask %s for its bin dir: %s", BUILD_SCRIPT, exc)
    cache = os.environ.get("CONVEYOR_CONTROL_PLANE_DIR")
    if cache:
        return Path(cache) / "bin"
    version = os.environ.get("CONVEYOR_K8S_VERSION", DEFAULT_K8S_VERSION)
    return Path.home() / ".cache" / "conveyor" / "control-plane" / version / "bin"


def _free_ports(count: int) -> list[int]:
    """Distinct currently-free TCP ports on 127.0.0.1."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _generate_rsa_key(path: Path) -> None:
    """Write a PEM RSA private key (service-account signing key) to ``path``."""
    try:
        from cryptography.hazmat.primitives import serialization  # type: ignore[import-not-found, unused-ignore]
        from cryptography.hazmat.primitives.asymmetric import rsa  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise ControlPlaneError(
                "need either the 'cryptography' package or the 'openssl' command "
                "to generate a service-account signing key"
            ) from None
        subprocess.run(
            [openssl, "genrsa", "-out", str(path), "2048"],
            check=True,
            capture_output=True,
        )
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    path.chmod(0o600)


def _die_with_parent() -> None:
    """preexec_fn: on Linux, SIGKILL the child if the test process dies (e.g. is SIGKILLed).

    SIGKILL, not SIGTERM: a gracefully stopping kube-apiserver can hang once etcd is gone.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _tail(path: Path, lines: int = 40) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"<no log at {path}>"
    return "\n".join(content[-lines:])


class ControlPlane:
    """etcd + kube-apiserver (+ optional kube-controller-manager) on 127.0.0.1.

    Use ``with ControlPlane() as cp: ...`` or ``start()``/``stop()``.  After
    start, ``kubeconfig_path``, ``server_url`` and ``token`` are set.
    ``with_controller_manager``: True requires it, False never starts it, None
    (default) starts it when its binary was built.
    """

    def __init__(
        self,
        bin_dir: Path | str | None = None,
        *,
        with_controller_manager: bool | None = None,
        startup_timeout: float = 120.0,
        stop_timeout: float = 15.0,
        extra_apiserver_args: list[str] | None = None,
        keep_tmp: bool | None = None,
    ) -> None:
        self.bin_dir = Path(bin_dir) if bin_dir is not None else default_bin_dir()
        self.with_controller_manager = with_controller_manager
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.extra_apiserver_args = list(extra_apiserver_args or [])
        if keep_tmp is None:
            keep_tmp = os.environ.get("CONVEYOR_CONTROL_PLANE_KEEP_TMP", "") not in ("", "0")
        self.keep_tmp = keep_tmp

        self.tmp_dir: Path | None = None
        self.kubeconfig_path: Path | None = None
        self.server_url: str | None = None
        self.token: str | None = None
        self.etcd_url: str | None = None
        self.ca_path: Path | None = None
        self.controller_manager_running = False
        # name -> (process, log file handle, log path); insertion order = start order
        self._procs: dict[str, tuple[subprocess.Popen[bytes], IO[bytes], Path]] = {}
        self._atexit_registered = False

    # -- binaries -----------------------------------------------------------

    def binary(self, name: str) -> Path:
        """Path of a built binary, or a ControlPlaneError telling how to build it."""
        path = self.bin_dir / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ControlPlaneError(
                f"control-plane binary {name!r} not found at {path}. "
                f"Build it first with: bash scripts/build-control-plane.sh "
                f"(it caches binaries outside the repo; set CONVEYOR_CONTROL_PLANE_DIR "
                f"to use another cache dir)"
            )
        return path

    def has_controller_manager_binary(self) -> bool:
        path = self.bin_dir / "kube-controller-manager"
        return path.is_file() and os.access(path, os.X_OK)

    # -- lifecycle ----------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        """Start everything and wait until the API server is ready."""
        if self._procs:
            raise ControlPlaneError("control plane already started")
        etcd_bin = self.binary("etcd")
        apiserver_bin = self.binary("kube-apiserver")
        kcm_bin: Path | None = None
        if self.with_controller_manager or (
            self.with_controller_manager is None and self.has_controller_manager_binary()
        ):
            kcm_bin = self.binary("kube-controller-manager")

        self.tmp_dir = Path(tempfile.mkdtemp(prefix="conveyor-control-plane-"))
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            self._start(etcd_bin, apiserver_bin, kcm_bin)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, etcd_bin: Path, apiserver_bin: Path, kcm_bin: Path | None) -> None:
        assert self.tmp_dir is not None
        tmp = self.tmp_dir
        deadline = time.monotonic() + self.startup_timeout
        etcd_client_port, etcd_peer_port, apiserver_port = _free_ports(3)

        # etcd
        self.etcd_url = f"http://127.0.0.1:{etcd_client_port}"
        peer_url = f"http://127.0.0.1:{etcd_peer_port}"
        self._spawn(
            "etcd",
            [
                str(etcd_bin),
                "--name=conveyor-test",
                f"--data-dir={tmp / 'etcd-data'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=conveyor-test={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._wait_for("etcd", deadline, self._etcd_healthy)

        # credentials and keys
        self.token = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
        token_file = tmp / "tokens.csv"
        token_file.write_text(f'{self.token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        token_file.chmod(0o600)
        sa_key = tmp / "service-account.key"
        _generate_rsa_key(sa_key)
        cert_dir = tmp / "certs"
        cert_dir.mkdir()

        # kube-apiserver
        self.server_url = f"https://127.0.0.1:{apiserver_port}"
        self._spawn(
            "kube-apiserver",
            [
                str(apiserver_bin),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={apiserver_port}",
                f"--cert-dir={cert_dir}",
                f"--token-auth-file={token_file}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                # 127.0.0.1 is not a valid endpoint address; skip the "kubernetes" endpoints.
                "--endpoint-reconciler-type=none",
                *self.extra_apiserver_args,
            ],
        )
        # The self-signed serving cert (with its CA) is written before the port opens.
        self.ca_path = cert_dir / "apiserver.crt"
        self._wait_for("kube-apiserver", deadline, self._apiserver_ready)

        self.kubeconfig_path = tmp / "kubeconfig"
        self._write_kubeconfig(self.kubeconfig_path)

        if kcm_bin is not None:
            self._spawn(
                "kube-controller-manager",
                [
                    str(kcm_bin),
                    f"--kubeconfig={self.kubeconfig_path}",
                    "--secure-port=0",
                    "--leader-elect=false",
                    f"--service-account-private-key-file={sa_key}",
                    f"--root-ca-file={self.ca_path}",
                    f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                    "--controllers=*",
                ],
            )
            # The serviceaccount controller creating "default" shows it is working
            # (and pods, e.g. from Deployments, need that service account).
            self._wait_for("kube-controller-manager", deadline, self._default_sa_exists)
            self.controller_manager_running = True
        logger.info(
            "control plane ready at %s (kubeconfig %s, controller-manager: %s)",
            self.server_url,
            self.kubeconfig_path,
            self.controller_manager_running,
        )

    def stop(self) -> None:
        """Terminate processes (SIGTERM, then SIGKILL) and remove the temp dir."""
        try:
            for name in reversed(list(self._procs)):
                proc, log_file, _ = self._procs[name]
                try:
                    self._terminate(name, proc)
                finally:
                    log_file.close()
        finally:
            self._procs.clear()
            self.controller_manager_running = False
            if self.tmp_dir is not None:
                if self.keep_tmp:
                    logger.info("keeping control-plane temp dir %s", self.tmp_dir)
                else:
                    shutil.rmtree(self.tmp_dir, ignore_errors=True)
                self.tmp_dir = None

    def _terminate(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            return
        logger.debug("stopping %s (pid %s)", name, proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not exit on SIGTERM; killing it", name)
            proc.kill()
            proc.wait(timeout=self.stop_timeout)

    # -- helpers ------------------------------------------------------------

    def api_client(self) -> ApiClient:
        """A new ``kubernetes`` ApiClient for this cluster (close it when done)."""
        from kubernetes import config

        assert self.kubeconfig_path is not None, "control plane not started"
        api: ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call, unused-ignore]
            config_file=str(self.kubeconfig_path)
        )
        return api

    def log_path(self, name: str) -> Path:
        """Log file of one component (etcd, kube-apiserver, kube-controller-manager)."""
        assert self.tmp_dir is not None, "control plane not started"
        return self.tmp_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 40) -> str:
        return _tail(self.log_path(name), lines)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log_path = self.log_path(name)
        log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        logger.debug("starting %s: %s", name, " ".join(argv))
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.tmp_dir,
                start_new_session=True,  # keep terminal Ctrl-C for pytest; we stop them
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        except BaseException:
            log_file.close()
            raise
        self._procs[name] = (proc, log_file, log_path)

    def _wait_for(self, name: str, deadline: float, check: Callable[[], bool]) -> None:
        proc = self._procs[name][0] if name in self._procs else None
        last_error = ""
        while True:
            if proc is not None and proc.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with code {proc.returncode} during startup; "
                    f"log tail:\n{self.log_tail(name)}"
                )
            try:
                if check():
                    return
            except Exception as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise ControlPlaneError(
                    f"{name} not ready after {self.startup_timeout:.0f}s"
                    f" (last error: {last_error or 'none'}); log tail:\n{self.log_tail(name)}"
                )
            time.sleep(0.25)

    def _etcd_healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as resp:
            return bool(json.loads(resp.read()).get("health") == "true")

    def _get(self, path: str) -> tuple[int, bytes]:
        assert self.server_url is not None and self.token is not None
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        req = urllib.request.Request(
            self.server_url + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def _apiserver_ready(self) -> bool:
        status, body = self._get("/readyz")
        return status == 200 and body.strip() == b"ok"

    def _default_sa_exists(self) -> bool:
        status, _ = self._get("/api/v1/namespaces/default/serviceaccounts/default")
        return status == 200

    def _write_kubeconfig(self, path: Path) -> None:
        assert self.ca_path is not None
        ca_data = base64.b64encode(self.ca_path.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "conveyor-test",
                    "cluster": {
                        "server": self.server_url,
                        "certificate-authority-data": ca_data,
                    },
                }
            ],
            "users": [{"name": ADMIN_USER, "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "conveyor-test",
                    "context": {
                        "cluster": "conveyor-test",
                        "user": ADMIN_USER,
                        "namespace": "default",
                    },
                }
            ],
            "current-context": "conveyor-test",
            "preferences": {},
        }
        # JSON is valid YAML, so every kubeconfig loader reads this.
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)

