"""A peer's server as a child process (its own session, so Ctrl-C reaches only the bench): started with a ready
file to wait for, stopped with SIGTERM, then SIGKILL to its process group."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ServerProcess", "free_port", "wait_for_stop", "write_ready"]


@dataclass
class ServerProcess:
    """`python -m MODULE ARGS --ready FILE`, ready once FILE holds JSON; `stop` ends it and everything it started."""

    name: str
    process: subprocess.Popen[bytes]
    ready_path: Path
    log_path: Path

    @classmethod
    def start(
        cls,
        name: str,
        module: str,
        args: list[str],
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 600.0,
    ) -> ServerProcess:
        """Start it and wait, printing progress every 15 s; `SystemExit` with the log's tail if it dies or stalls."""
        ready, log_path = workdir / f"{name}.ready.json", workdir / f"{name}.log"
        command = [sys.executable, "-m", module, *args, "--ready", str(ready)]
        print(f"starting {name}: python -m {module} {' '.join(args)} (log: {log_path})", flush=True)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
            )
        server = cls(name, process, ready, log_path)
        try:
            server._wait_ready(ready_timeout_s)
        except BaseException:  # Ctrl-C or a failed start: the process is ours to end, nobody else has its handle
            server.stop(grace_s=30.0)
            raise
        return server

    def _wait_ready(self, timeout_s: float) -> None:
        started = last = time.monotonic()
        while not (self.ready_path.exists() and self.ready_path.read_text().strip()):
            if self.process.poll() is not None:
                raise SystemExit(
                    f"{self.name} exited with {self.process.returncode} before it was ready; see {self.log_path}:\n{self.log_tail()}"
                )
            now = time.monotonic()
            if now - started > timeout_s:
                raise SystemExit(f"{self.name} was not ready after {timeout_s:.0f}s; see {self.log_path}:\n{self.log_tail()}")
            if now - last >= 15:
                print(f"  {self.name}: still starting ({now - started:.0f}s)", flush=True)
                last = now
            time.sleep(0.25)
        print(f"{self.name} ready in {time.monotonic() - started:.1f}s", flush=True)

    def info(self) -> dict[str, Any]:
        """What the server wrote to its ready file (its ports, how it was configured)."""
        return dict(json.loads(self.ready_path.read_text()))

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, grace_s: float = 60.0) -> None:
        """SIGTERM (the server shuts itself down cleanly), then SIGKILL to its process group after `grace_s`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                print(f"{self.name} did not stop in {grace_s:.0f}s; killing its process group", flush=True)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever it left behind (Ray's raylet, tritonserver)
        except (ProcessLookupError, PermissionError):
            pass
        if self.process.poll() is None:
            self.process.wait(10)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for servers that cannot report the one they bound)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_stop() -> None:
    """Block the server's main thread until SIGTERM or SIGINT (for its clean shutdown afterwards)."""
    import threading

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def write_ready(path: Path, info: Mapping[str, Any]) -> None:
    """Write the ready file atomically (the bench polls for it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(info)))
    tmp.replace(path)
