"""A real S3-compatible server for tests: moto's standalone server in a process of its own, authentication on.

    with s3_server(buckets=["models"]) as s3:
        uri = s3.upload("models/a.onnx", data)      # s3://models/a.onnx
        env = s3.env()                               # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... for the client

The server runs in moto's own venv (scripts/install-s3-server.sh makes it; $CONVEYOR_S3_SERVER_PYTHON overrides):
moto needs botocore, whose python-dateutil<3 clashes with the kubernetes client's >=3. Nothing is patched: clients
talk HTTP to it. `host` is the address it binds (e2e tests bind one that pods reach; `endpoint_at` names it).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["S3Server", "s3_server", "s3_server_python"]

REPO_ROOT = Path(__file__).resolve().parents[2]
_LAUNCHER = Path(__file__).with_name("moto_launcher.py")
#: Seconds the server gets to come up (it imports moto and makes a user and the buckets: ~3 s here). Test fixtures
#: are not under pytest-timeout, so without this bound a server that never binds (its address gone) hangs the run.
READY_TIMEOUT_S = 120.0


def s3_server_python() -> Path:
    """The Python that has moto: $CONVEYOR_S3_SERVER_PYTHON, else where scripts/install-s3-server.sh puts it."""
    override = os.environ.get("CONVEYOR_S3_SERVER_PYTHON")
    if override:
        return Path(override)
    base = Path(os.environ.get("CONVEYOR_S3_SERVER_DIR") or Path.home() / ".cache/conveyor/s3-server")
    return base / "venv/bin/python"


@dataclass
class S3Server:
    """A running server: its endpoint and the one access key it accepts."""

    host: str
    port: int
    endpoint: str
    access_key_id: str
    secret_access_key: str
    region: str
    process: subprocess.Popen[bytes] = field(repr=False)

    def endpoint_at(self, address: str) -> str:
        """The endpoint as seen from elsewhere, e.g. a pod that reaches this machine at `address`."""
        return f"http://{address}:{self.port}"

    def env(self, **overrides: str) -> dict[str, str]:
        """The standard variables an S3 client (obstore, the AWS CLI, boto3) reads, for this server."""
        env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
            "AWS_ALLOW_HTTP": "true",
        }
        env.update(overrides)
        return env

    def upload(self, bucket_key: str, data: bytes | Path) -> str:
        """Put `data` (bytes or a file's content) at ``bucket/key``; returns its ``s3://`` URI."""
        from obstore import put
        from obstore.store import S3Store

        bucket, _, key = bucket_key.partition("/")
        store = S3Store(
            bucket,
            endpoint=self.endpoint,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            region=self.region,
            client_options={"allow_http": True},
        )
        put(store, key, data if isinstance(data, bytes) else Path(data))
        return f"s3://{bucket}/{key}"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop the server now (also mid-transfer: its connections go with the process)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


@contextmanager
def s3_server(
    host: str = "127.0.0.1",
    port: int = 0,
    buckets: Sequence[str] = ("models",),
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> Iterator[S3Server]:
    """Start the server on `host`:`port` (0: a free port) with `buckets` made; stop it on exit."""
    python = s3_server_python()
    if not python.exists():
        pytest.fail(f"no S3 server: {python} is missing; run `bash scripts/install-s3-server.sh` (scripts/test.sh does)")
    process = subprocess.Popen(
        [str(python), str(_LAUNCHER), host, str(port), *buckets],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        env={**os.environ, **(env or {})},
    )
    try:
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], ready_timeout_s)
        if not readable:
            raise RuntimeError(
                f"the S3 server on {host}:{port} was not ready within {ready_timeout_s:.0f}s; "
                "check that this machine has that address (see stderr above)"
            )
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the S3 server exited before it was ready (code {process.wait(timeout=30)}); see stderr above")
        info = json.loads(line)
        server = S3Server(
            host=host,
            port=int(info["port"]),
            endpoint=info["endpoint"],
            access_key_id=info["access_key_id"],
            secret_access_key=info["secret_access_key"],
            region=info["region"],
            process=process,
        )
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
