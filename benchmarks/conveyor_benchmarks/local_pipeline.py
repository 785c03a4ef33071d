"""A pipeline under test: a `conveyor run` process on free ports, and what its --addresses-json file says."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LocalPipeline", "gateway_process", "process_pids"]

_EMBEDDED = " + gateway"


def process_pids(addresses: dict[str, Any]) -> dict[str, int]:
    """Process name -> pid from a `conveyor run --addresses-json` file: the gateway (the runner itself, where the
    file names its pid) and every step replica that has a process of its own. With the gateway embedded in a step's
    replica (`gatewayIn`), the runner is "runner" and that replica "<step>[0] + gateway"."""
    embedded = addresses.get("gatewayIn")
    pids = {("runner" if embedded else "gateway"): int(addresses["pid"])} if "pid" in addresses else {}
    for step, replicas in addresses["steps"].items():
        for index, replica in enumerate(replicas):
            if "inProcessWith" not in replica:  # a step in another's process: listed under that step already
                pids[f"{step}[{index}]" + (_EMBEDDED if step == embedded else "")] = replica["pid"]
    return pids


def gateway_process(names: Iterable[str]) -> str | None:
    """Which of `process_pids`' names is the process the gateway runs in: "gateway" or an embedding replica's."""
    return next((name for name in names if name == "gateway" or name.endswith(_EMBEDDED)), None)


@dataclass
class LocalPipeline:
    """`conveyor run MANIFEST` started by `start`, ready once it wrote its addresses; `stop` ends it."""

    process: subprocess.Popen[bytes]
    addresses_path: Path
    log_path: Path

    @classmethod
    def start(
        cls,
        manifest: Path,
        workdir: Path,
        *,
        replicas: Sequence[str] = (),
        http: bool = True,
        ready_timeout_s: float = 900.0,
        env: dict[str, str] | None = None,
        run_args: Sequence[str] = (),
    ) -> LocalPipeline:
        """Start it (gRPC on a free port, HTTP too when `http`, `--replicas STEP=N` each, then `run_args`, `env` added
        to this process's environment) and wait until ready."""
        addresses, log_path = workdir / "addresses.json", workdir / "run.log"
        command = [sys.executable, "-m", "conveyor_runtime.cli", "--log-level", "WARNING", "run", str(manifest)]
        command += ["--grpc-port", "0", "--http-port", "0" if http else "-1", "--addresses-json", str(addresses)]
        for value in replicas:
            command += ["--replicas", value]
        command += run_args
        settings = "".join(f"{name}={value} " for name, value in (env or {}).items())
        print(f"starting the pipeline: {settings}conveyor {' '.join(command[3:])} (log: {log_path})", flush=True)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
            )
        pipeline = cls(process, addresses, log_path)
        started = time.monotonic()
        try:
            while not (addresses.exists() and addresses.read_text().strip()):
                if process.poll() is not None:
                    raise SystemExit(f"conveyor run exited with {process.returncode}; see {log_path}:\n{pipeline.log_tail()}")
                if time.monotonic() - started > ready_timeout_s:
                    raise SystemExit(f"the pipeline was not ready after {ready_timeout_s:.0f}s; see {log_path}")
                time.sleep(0.5)
        except BaseException:  # not ready (or Ctrl-C while waiting): it runs in a session of its own, so stop it here
            pipeline.stop()
            raise
        print(f"pipeline ready in {time.monotonic() - started:.1f}s", flush=True)
        return pipeline

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def addresses(self) -> dict[str, Any]:
        return dict(json.loads(self.addresses_path.read_text()))

    def pids(self) -> dict[str, int]:
        """Process name -> pid: the gateway (inside the runner, unless embedded) and every step replica."""
        return process_pids(self.addresses())

    def restarts(self) -> dict[str, int]:
        return {
            f"{s}[{i}]": r["restarts"]
            for s, rs in self.addresses()["steps"].items()
            for i, r in enumerate(rs)
            if "inProcessWith" not in r
        }

    def stop(self) -> None:
        """SIGTERM (the runner stops the gateway, then the replicas); SIGKILL to the group after 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
