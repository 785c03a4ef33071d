"""Helpers for pipeline tests: tiny in-test step servers, manifests, and a `conveyor run` process wrapper."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from conveyor_runtime.errors import RequestError
from conveyor_runtime.protocol import abort_with, add_inference_servicer, decode_tensors, encode_tensors, pb
from conveyor_runtime.spec import PipelineManifest, parse_manifest
from conveyor_runtime.step.call_streams import CallStreams

#: Ops for `conveyor run` test pipelines, as the source of a module `testops` written beside the manifest: the replicas
#: import it from the manifest's directory (their working directory).
RUN_TEST_OPS = textwrap.dedent(
    '''
    """Test ops: Hold keeps each request until the file `release` appears; Chatty prints 1 MiB lines."""
    import sys
    import time
    from pathlib import Path

    from conveyor_runtime import Op


    class Hold(Op):
        batched = False

        def init(self, config, context):
            self.dir = Path(config["dir"])

        def preprocess(self, inputs, request):
            (self.dir / "entered").touch()
            while not (self.dir / "release").exists():
                time.sleep(0.01)
            return inputs


    class Chatty(Op):
        def init(self, config, context):
            print("x" * 2**20, flush=True)
            print("chatty: still talking after the long line", flush=True)

        def preprocess(self, inputs, request):
            sys.stdout.write("y" * 2**20 + "\\n")
            sys.stdout.flush()
            return inputs
    '''
)


REPO = Path(__file__).resolve().parents[2]
Arrays = dict[str, np.ndarray]
StepFn = Callable[[Arrays], Awaitable[Arrays] | Arrays]


@dataclass
class FakeStep:
    """An `inference.GRPCInferenceService` computing `fn` on the request's tensors (numpy in, numpy out)."""

    name: str
    fn: StepFn
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (name, datatype) for ModelMetadata
    outputs: list[tuple[str, str]] = field(default_factory=list)
    calls: int = 0
    deadlines: list[float | None] = field(default_factory=list)
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="fake")

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        response = pb.ModelMetadataResponse(name=self.name)
        for name, datatype in self.inputs:
            response.inputs.add(name=name, datatype=datatype, shape=[-1])
        for name, datatype in self.outputs:
            response.outputs.add(name=name, datatype=datatype, shape=[-1])
        return response

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        self.calls += 1
        self.deadlines.append(context.time_remaining())
        self.entered.set()
        try:
            arrays = decode_tensors(request)
            result = self.fn(arrays)
            if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
                result = await result
        except RequestError as exc:
            await abort_with(context, exc)
            raise
        response = pb.ModelInferResponse(model_name=self.name)
        assert isinstance(result, Mapping)
        encode_tensors(response, result.items())
        return response


@dataclass
class RunningStep:
    servicer: FakeStep
    server: grpc.aio.Server
    health: Any
    port: int
    call_streams: CallStreams | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", status)

    async def stop(self) -> None:
        await self.server.stop(None)


async def start_fake_step(servicer: FakeStep, port: int = 0, serving: bool = True, *, call_streams: bool = True) -> RunningStep:
    """Serve `servicer` with a health service on 127.0.0.1 (port 0 picks a free port); with `call_streams`, its
    ModelInfer also takes calls on call streams, as a real step's does."""
    server = grpc.aio.server()
    add_inference_servicer(server, servicer)
    streams = CallStreams(servicer.ModelInfer, max_calls=1000) if call_streams else None
    if streams is not None:
        streams.add_to(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    running = RunningStep(servicer, server, health_servicer, bound, streams)
    await running.set_serving(serving)
    return running



class ListedEndpoints:
    """An endpoint source whose list the test edits (what DNS or an Endpoints object does in a cluster)."""

    refresh_s: float | None = 0.02

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses

    async def resolve(self) -> list[str]:
        return list(self.addresses)

    def describe(self) -> str:
        return "listed"


async def eventually(condition: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Poll `condition` on the event loop until it holds; fail after `timeout` seconds naming `what`."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)

def manifest(name: str, steps: list[dict[str, Any]], **spec: Any) -> PipelineManifest:
    """A validated manifest from step dicts (each needs `op` or `model`; `op: identity` is fine for fake steps)."""
    return parse_manifest(
        {"apiVersion": "conveyor.dev/v1alpha1", "kind": "InferencePipeline", "metadata": {"name": name}, "spec": {"steps": steps, **spec}}
    )


# --- `conveyor run` as a subprocess --------------------------------------------------------------------------


@dataclass
class RunProcess:
    """A `conveyor run` subprocess and the addresses it reported."""

    process: subprocess.Popen[bytes]
    addresses: dict[str, Any]
    log_path: Path
    addresses_path: Path

    def reload(self) -> dict[str, Any]:
        """Re-read the addresses file (the runner rewrites it when it restarts a replica)."""
        self.addresses = json.loads(self.addresses_path.read_text())
        return self.addresses

    @property
    def grpc(self) -> str:
        return str(self.addresses["grpc"])

    @property
    def http(self) -> str:
        return str(self.addresses["http"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (what Ctrl-C-like shutdown does), then kill after `timeout`; returns the exit code."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    return self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    return self.process.wait(10)
            return int(self.process.returncode)
        finally:  # whatever happened, leave nothing behind: the runner's group, then each replica (own session)
            pids = [self.process.pid]
            try:
                for replicas in self.reload().get("steps", {}).values():
                    pids += [r["pid"] for r in replicas if r.get("pid")]
            except (OSError, ValueError):
                pass
            for pid in pids:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def start_run(manifest_path: Path, tmp_path: Path, *extra: str, timeout: float = 240.0) -> RunProcess:
    """Start `conveyor run` on free ports and wait (bounded) until it reports its addresses."""
    addresses_file = tmp_path / "addresses.json"
    log_path = tmp_path / "run.log"
    command = [
        sys.executable,
        "-m",
        "conveyor_runtime.cli",
        "run",
        str(manifest_path),
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        "--addresses-json",
        str(addresses_file),
        *extra,
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if addresses_file.exists():
            text = addresses_file.read_text()
            if text.strip():
                return RunProcess(process, json.loads(text), log_path, addresses_file)
        if process.poll() is not None:
            raise AssertionError(f"conveyor run exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.2)
    run = RunProcess(process, {}, log_path, addresses_file)
    run.stop()
    raise AssertionError(f"conveyor run was not ready within {timeout}s:\n{run.log()}")
