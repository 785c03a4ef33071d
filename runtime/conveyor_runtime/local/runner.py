"""`conveyor run` on one machine: builds the models once, starts every step replica as a process, supervises them
(a crashed replica is restarted on its ports), and serves the pipeline through a gateway: embedded in the entry step's
process when that step has one replica (`local.gateway_host`: the steps there are called in memory), else in this one.

Ctrl-C or SIGTERM stops the gateway first (it finishes in-flight requests), then the steps; the replicas run in
sessions of their own so that a terminal's Ctrl-C does not reach them directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from ..errors import FieldError, InvalidManifest, RunnerFailed, UsageError
from ..gateway import Balancer, Gateway, StaticEndpoints
from ..routing import StepClient
from ..serving import TaskSet, free_ports
from ..sources import cache_dir, cached_path, local_file, remote_values
from ..spec import ExecutionPlan, host_of, load_manifest
from ..spec.uris import is_remote_uri
from ..step import ensure_model
from .output import forward_lines
from .replica import MAX_STARTUP_CRASHES, ReplicaProcess
from .spawn import SpawnedProcess, spawn

__all__ = ["GATEWAY_PLACEMENTS", "LocalRunner"]

#: Where `conveyor run` serves the gateway: auto (embedded when the entry step has one replica), embedded (in the
#: entry step's replica: one process hop less per request, on cores the gateway shares with the steps) or separate
#: (in the runner's own process).
GATEWAY_PLACEMENTS = ("auto", "embedded", "separate")

log = logging.getLogger(__name__)

#: What a step server logs once serving, e.g. "... SERVING on 127.0.0.1:9000 (provider CPUExecutionProvider, ...".
_PROVIDER = re.compile(r"SERVING on \S+ \(provider ([^,)\s]+)")


class LocalRunner:
    """Runs a whole pipeline on 127.0.0.1: step replicas as subprocesses, the gateway in this process.

    `grpc_port` and `http_port` default to the manifest's `spec.gateway` ports (0 picks a free port, an
    `http_port` of -1 turns HTTP off); `replicas` overrides steps' replica counts; `clock` times replica runs.
    `gateway`: where the gateway runs: "embedded" in the process of the entry step's (single) replica, "separate" in
    this one, "auto" (the default) embedded where the entry step has one replica.
    """

    def __init__(
        self,
        manifest_path: str | Path,
        *,
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        replicas: Mapping[str, int] | None = None,
        ready_timeout_s: float = 600.0,
        grace_s: float = 10.0,
        log_level: str = "INFO",
        out: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        gateway: str = "auto",
    ) -> None:
        self.manifest_path = Path(manifest_path).resolve()
        self.manifest = load_manifest(self.manifest_path)
        self.plan = ExecutionPlan.from_manifest(self.manifest)
        #: each planned step's host: the step whose processes serve it (itself, unless it is `inProcessWith` another)
        self.hosts = {name: host_of(self.manifest.spec, name) for name in self.plan.order}
        #: the steps with processes of their own, in plan order (a host outside the plan still serves its guests)
        self.process_steps = list(dict.fromkeys(self.hosts[name] for name in self.plan.order))
        self.replica_counts = self._replica_counts(replicas or {})
        #: the step whose (only) replica serves the gateway, or None: the gateway runs in this process
        self.gateway_host: str | None = self._gateway_host(gateway)
        ports = self.manifest.spec.gateway
        self.grpc_port = ports.grpcPort if grpc_port is None else grpc_port
        http_port = ports.httpPort if http_port is None else http_port
        self.http_port: int | None = None if http_port < 0 else http_port
        self.metrics_port = metrics_port
        self.ready_timeout_s = ready_timeout_s
        self.grace_s = grace_s
        self.log_level = log_level
        self.out = out or sys.stderr
        self._clock = clock
        self.replicas: list[ReplicaProcess] = []
        self.gateway: Gateway | None = None
        #: what tells this process which replicas are healthy: the gateway's balancers, or (embedded) balancers of
        #: its own; and (embedded) the one that watches the embedded gateway's health
        self._watched: dict[str, StepClient] = {}
        self._gateway_watch: Balancer | None = None
        self._stopping = False
        self._tasks = TaskSet(f"conveyor run {self.manifest.metadata.name}")
        self._output = TaskSet(f"conveyor run {self.manifest.metadata.name} output")
        self._on_change: Callable[[], None] | None = None
        self._failed: asyncio.Future[str] | None = None

    @property
    def name(self) -> str:
        return self.manifest.metadata.name

    def _replica_counts(self, overrides: Mapping[str, int]) -> dict[str, int]:
        """Replicas per step; zero cannot serve here (a cluster may park a pipeline at zero, a local run cannot)."""
        guests = {step: self.hosts[step] for step in overrides if self.hosts.get(step, step) != step}
        if guests:
            step, host = next(iter(guests.items()))
            raise ValueError(
                f"replicas: step {step!r} runs in the processes of step {host!r} (inProcessWith); scale {host!r} instead"
            )
        wrong = {step: count for step, count in overrides.items() if step not in self.process_steps or count < 1}
        if wrong:
            raise ValueError(f"replicas: expected {{step: count >= 1}} for steps {self.process_steps}, got {wrong}")
        zero = "0 replicas cannot serve under conveyor run; set at least 1"
        errors = [FieldError("spec.gateway.replicas", zero)] if self.manifest.spec.gateway.replicas == 0 else []
        errors += [
            FieldError(f"spec.steps[{index}].replicas", f"{zero}, or pass --replicas {step.name}=1")
            for index, step in enumerate(self.manifest.spec.steps)
            if step.replicas == 0 and step.name not in overrides and step.name in self.process_steps
        ]
        if errors:
            raise InvalidManifest(errors, str(self.manifest_path))
        specs = {step.name: step for step in self.manifest.spec.steps}
        return {name: overrides.get(name, specs[name].replicas) for name in self.process_steps}

    def _gateway_host(self, placement: str) -> str | None:
        """The step whose only replica serves the gateway (see `GATEWAY_PLACEMENTS`), or None: this process does."""
        if placement not in GATEWAY_PLACEMENTS:
            raise UsageError(f"--gateway: expected one of {', '.join(GATEWAY_PLACEMENTS)}, got {placement!r}")
        host = self.hosts[self.plan.entry]
        if placement == "separate" or (placement == "auto" and self.replica_counts[host] != 1):
            return None
        if self.replica_counts[host] != 1:
            raise UsageError(
                f"--gateway embedded runs the gateway in the process of step {host!r}, the pipeline's entry, so that step "
                f"needs 1 replica (it has {self.replica_counts[host]}); pass --replicas {host}=1 or --gateway separate"
            )
        return host

    def _say(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    # --- start ------------------------------------------------------------------------------------------------

    async def build_models(self) -> None:
        """Fetch or build every missing model and op file once, before any replica starts (so replicas never race for
        it); the replicas then find them in place (built) or in the model cache (fetched)."""
        base = self.manifest_path.parent
        for name in self.plan.order:
            spec = self.plan.nodes[name].spec
            for uri in remote_values(spec.config):
                await self._fetch(f"op file for step {name}", uri, None, partial(local_file, uri, base_dir=base))
            model = spec.model
            if model is None:
                continue
            if model.uri is not None:
                await self._fetch(f"model for step {name}", model.uri, model.sha256, partial(ensure_model, model, base))
                continue
            assert model.path is not None
            path = Path(model.path) if Path(model.path).is_absolute() else base / model.path
            if not path.exists() and model.build:
                self._say(f"building model for step {name}: {path} ({model.build}, first run only) ...")
            started = time.monotonic()
            await asyncio.to_thread(ensure_model, model, base)
            if time.monotonic() - started > 0.5:
                self._say(f"  built {path.name} in {time.monotonic() - started:.1f}s")

    async def _fetch(self, what: str, uri: str, sha256: str | None, fetch: Callable[[], Path]) -> None:
        """Make one source a local file, saying so when it downloads (not when an earlier run or `conveyor fetch` did)."""
        downloads = is_remote_uri(uri) and not cached_path(uri, sha256, cache_dir()).is_file()
        if downloads:
            self._say(f"fetching {what}: {uri} ...")
        started = time.monotonic()
        path = await asyncio.to_thread(fetch)
        if downloads:
            self._say(f"  fetched {path.name} in {time.monotonic() - started:.1f}s -> {path}")

    async def _launch(self, replica: ReplicaProcess) -> None:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # not the loop's subprocess_exec: see local.spawn (in a session of its own: a terminal's Ctrl-C reaches only
        # the runner, which stops the gateway first)
        replica.process = await spawn(
            replica.command(self.manifest_path, self.log_level), cwd=str(self.manifest_path.parent), env=env
        )
        replica.started_at = self._clock()
        self._output.spawn(self._forward_output(replica, replica.process), name=f"output-{replica.name}")
        self._tasks.spawn(self._supervise(replica, replica.process), name=f"supervise-{replica.name}")

    async def _forward_output(self, replica: ReplicaProcess, process: SpawnedProcess) -> None:
        """Print the replica's output, each line prefixed with its name, until the process closes it."""

        def emit(text: str) -> None:
            text = text.rstrip()
            replica.tail = (replica.tail + [text])[-20:]
            found = _PROVIDER.search(text)
            if found:
                replica.provider = found.group(1)
            print(f"[{replica.name}] {text}", file=self.out, flush=True)

        assert process.stdout is not None
        await forward_lines(process.stdout, emit)

    async def _supervise(self, replica: ReplicaProcess, process: SpawnedProcess) -> None:
        """Restart the replica when its process exits on its own (not when the runner stops it)."""
        code = await process.wait()
        if self._stopping or replica.process is not process:
            return
        delay = replica.backoff.delay(started_at=replica.started_at, exited_at=self._clock())
        replica.restarts += 1
        if not replica.ever_ready:
            replica.crashes_before_ready += 1
            if replica.crashes_before_ready >= MAX_STARTUP_CRASHES and self._failed is not None and not self._failed.done():
                tail = "\n".join(f"    {line}" for line in replica.tail[-12:])
                self._failed.set_result(
                    f"step replica {replica.name} exited with code {code} {replica.crashes_before_ready} times before "
                    f"becoming ready; its last output:\n{tail}"
                )
                return
        self._say(f"step replica {replica.name} exited with code {code}; restarting in {delay:.1f}s (restart #{replica.restarts})")
        await asyncio.sleep(delay)
        if not self._stopping:
            await self._launch(replica)
            if self._on_change is not None:
                self._on_change()

    async def start(self, on_change: Callable[[], None] | None = None) -> None:
        """Build models, start replicas and the gateway, and wait until every step has all replicas ready."""
        self._on_change = on_change
        self._failed = asyncio.get_running_loop().create_future()
        await self.build_models()
        # Every port this run picks, picked at once: the gateway's too when asked for 0, since a later bind to port 0
        # could take a port just handed to a replica that has not bound it yet.
        picked = sum(self.replica_counts.values()) * 2
        picked += sum(1 for port in (self.grpc_port, self.http_port, self.metrics_port) if port == 0)
        ports = iter(free_ports(picked))
        for name in self.process_steps:
            for index in range(self.replica_counts[name]):
                self.replicas.append(ReplicaProcess(name, index, next(ports), next(ports)))
        if self.grpc_port == 0:
            self.grpc_port = next(ports)
        if self.http_port == 0:
            self.http_port = next(ports)
        if self.metrics_port == 0:
            self.metrics_port = next(ports)
        # a step in another's process (inProcessWith) is reached at its host's replicas
        addresses = {name: [r.address for r in self.replicas if r.step == self.hosts[name]] for name in self.plan.order}
        for replica in self.replicas:  # a replica may forward outputs along the chains of the steps it serves
            served = [name for name in self.plan.order if self.hosts[name] == replica.step]
            after = [peer for name in served for peer in self.plan.chain_after(name)]
            replica.peers = {peer: addresses[peer] for peer in dict.fromkeys(after) if self.hosts[peer] != replica.step}
        if self.gateway_host is not None:
            await self._embed_gateway(addresses)
        else:
            await self._start_gateway(addresses)
        total = len(self.replicas)
        if self.manifest.spec.gateway.replicas > 1:
            self._say(f"spec.gateway.replicas is {self.manifest.spec.gateway.replicas}; conveyor run serves through one gateway")
        self._say(f"starting {total} step replica(s) for pipeline {self.name} ...")
        for replica in self.replicas:
            await self._launch(replica)
        await self._wait_ready(total)

    async def _start_gateway(self, addresses: Mapping[str, list[str]]) -> None:
        sources = {name: StaticEndpoints(addresses[name]) for name in self.plan.order}
        self.gateway = Gateway(
            self.manifest,
            sources,
            host="127.0.0.1",
            grpc_port=self.grpc_port,
            http_port=self.http_port,
            metrics_port=self.metrics_port,
        )
        try:
            await self.gateway.start()
        except OSError as exc:
            raise RunnerFailed(f"{exc}; pass --grpc-port 0 --http-port 0 to pick free ports") from None
        self.grpc_port = self.gateway.grpc_port
        self.http_port = self.gateway.http_port
        self.metrics_port = self.gateway.metrics_port
        self._watched = dict(self.gateway.balancers)

    async def _embed_gateway(self, addresses: Mapping[str, list[str]]) -> None:
        """Have the entry step's replica serve the gateway on this run's ports, and watch every replica's health and
        the gateway's (SERVING once it reaches every step) from here."""
        (host,) = [r for r in self.replicas if r.step == self.gateway_host]
        host.gateway_ports = (self.grpc_port, self.http_port, self.metrics_port)
        host.endpoints = {name: addresses[name] for name in self.plan.order if self.hosts[name] != host.step}
        # health watches only: these balancers never call anything, so no call streams either
        self._watched = {
            name: Balancer(name, StaticEndpoints(addresses[name]), call_streams=False) for name in self.plan.order
        }
        gateway = StaticEndpoints([f"127.0.0.1:{self.grpc_port}"])
        what = f"the gateway in {self.gateway_host}'s process at"
        self._gateway_watch = Balancer("gateway", gateway, call_streams=False, what=what)
        for watcher in [*self._watched.values(), self._gateway_watch]:
            await watcher.start()

    def _healthy(self) -> set[str]:
        return {r["address"] for watcher in self._watched.values() for r in watcher.snapshot() if r["healthy"]}

    async def _wait_ready(self, total: int) -> None:
        assert self._failed is not None
        started = time.monotonic()
        announced: set[str] = set()
        while True:
            healthy = self._healthy()
            for replica in self.replicas:
                if replica.address in healthy and replica.name not in announced:
                    announced.add(replica.name)
                    replica.ever_ready = True
                    self._say(
                        f"  [{len(announced)}/{total}] {replica.name} ready on {replica.address} "
                        f"({time.monotonic() - started:.1f}s)"
                    )
            if len(announced) == total and (self._gateway_watch is None or self._gateway_watch.ready):
                return
            if self._failed.done():
                raise RunnerFailed(self._failed.result() + "\nnext: fix the step (see its output above) and run again")
            if time.monotonic() - started > self.ready_timeout_s:
                waiting = ", ".join(r.name for r in self.replicas if r.name not in announced) or "the embedded gateway"
                raise RunnerFailed(
                    f"step replica(s) {waiting} not ready after {self.ready_timeout_s:.0f}s; "
                    "check their output above or raise --ready-timeout"
                )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._failed), 0.25)

    # --- reporting ----------------------------------------------------------------------------------------------

    def addresses(self) -> dict[str, Any]:
        """Where everything listens (and the processes' pids): what `--addresses-json` writes."""
        return {
            "pipeline": self.name,
            "pid": os.getpid(),  # this process: the gateway runs in it, unless embedded (then in the host's replica)
            "grpc": f"127.0.0.1:{self.grpc_port}",
            "http": f"127.0.0.1:{self.http_port}" if self.http_port is not None else None,
            "metrics": f"127.0.0.1:{self.metrics_port}" if self.metrics_port is not None else None,
            **({"gatewayIn": self.gateway_host} if self.gateway_host is not None else {}),
            "steps": {
                name: [
                    {
                        "address": r.address,
                        "metrics": f"127.0.0.1:{r.metrics_port}",
                        "pid": r.process.pid if r.process is not None else None,
                        "restarts": r.restarts,
                        # a step in another's process (inProcessWith) lists its host's replicas: the same processes
                        **({"inProcessWith": r.step} if r.step != name else {}),
                    }
                    for r in self.replicas
                    if r.step == self.hosts[name]
                ]
                for name in self.plan.order
            },
        }

    async def summary(self) -> str:
        """The readiness table: step, replicas, ports, kind/provider and state."""
        healthy = self._healthy()
        rows = [("STEP", "REPLICAS", "PORTS (gRPC/metrics)", "RUNS", "STATE")]
        for name in self.plan.order:
            spec = self.plan.nodes[name].spec
            mine = [r for r in self.replicas if r.step == self.hosts[name]]
            ready = sum(r.address in healthy for r in mine)
            ports = " ".join(f"{r.port}/{r.metrics_port}" for r in mine)
            providers = sorted({r.provider for r in mine if r.provider})
            runs = spec.op or ""
            if spec.model is not None:
                source = spec.model.path or spec.model.uri or ""
                runs = f"{source.rsplit('/', 1)[-1]} [{', '.join(providers) or spec.model.device}]"
            if self.hosts[name] != name:
                runs = f"{runs} (in {self.hosts[name]}'s processes)"
            rows.append((name, f"{ready}/{len(mine)}", ports, runs, "ready" if ready == len(mine) else "degraded"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        lines.append("")
        where = f", gateway in {self.gateway_host}'s process" if self.gateway_host is not None else ""
        lines.append(f"pipeline {self.name} is ready: model {self.name!r}{where}")
        lines.append(f"  gRPC  127.0.0.1:{self.grpc_port}   (tritonclient.grpc, conveyor infer --url 127.0.0.1:{self.grpc_port})")
        if self.http_port is not None:
            lines.append(f"  HTTP  http://127.0.0.1:{self.http_port}/v2/models/{self.name}/infer")
        if self.metrics_port is not None:
            lines.append(f"  metrics http://127.0.0.1:{self.metrics_port}/metrics")
        lines.append("press Ctrl-C to stop")
        return "\n".join(lines)

    # --- stop ---------------------------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop the gateway (in-flight requests get the grace period to finish, through every step), then SIGTERM
        every replica, and SIGKILL those still running after the grace period. An embedded gateway stops with its
        replica, which therefore goes first (its gateway's drain, then its step's), the others after it."""
        self._stopping = True
        if self.gateway is not None:
            await self.gateway.stop(self.grace_s)
        first = [r for r in self.replicas if r.step == self.gateway_host]
        await self._terminate(first, 2 * self.grace_s, "stopping the gateway and its step replica ...")
        rest = [r for r in self.replicas if r not in first]
        await self._terminate(rest, self.grace_s, "gateway stopped; stopping {count} step replica(s) ...")
        if self._gateway_watch is not None:  # embedded: the watchers are this runner's own
            for watcher in [*self._watched.values(), self._gateway_watch]:
                await watcher.aclose()
        await self._tasks.aclose()
        with contextlib.suppress(asyncio.TimeoutError):  # the replicas' last output lines, up to their EOF
            await asyncio.wait_for(self._output.wait(), 5)
        await self._output.aclose()
        for replica in self.replicas:
            if replica.process is not None:
                replica.process.close()

    async def _terminate(self, replicas: list[ReplicaProcess], grace_s: float, message: str) -> None:
        """SIGTERM the replicas' running processes (saying `message`, with their `count`, if any) and SIGKILL those
        still running after `grace_s`."""
        running = [r.process for r in replicas if r.process is not None and r.process.returncode is None]
        if not running:
            return
        self._say(message.format(count=len(running)))
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        _, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in running], timeout=grace_s)
        for process in running:
            if process.returncode is None:
                log.warning("replica pid %d did not stop within %.0fs; killing it", process.pid, grace_s)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        if pending:
            await asyncio.wait(pending, timeout=5)

    async def run(self, stop: asyncio.Event, addresses_json: str | None = None) -> None:
        """Start, print the summary, keep `addresses_json` current, and run until `stop` is set."""

        def write_addresses() -> None:
            if addresses_json is None:
                return
            text = json.dumps(self.addresses(), indent=2)
            if addresses_json == "-":
                print(json.dumps(self.addresses()), flush=True)
                return
            tmp = f"{addresses_json}.tmp"
            Path(tmp).write_text(text)
            os.replace(tmp, addresses_json)

        def stopping(_: object) -> None:
            # from now on a replica's exit is not a crash (nothing is restarted while stopping)
            self._stopping = True

        watcher = asyncio.ensure_future(stop.wait())
        watcher.add_done_callback(stopping)
        try:
            start = asyncio.ensure_future(self.start(on_change=write_addresses))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait([start, stopped], return_when=asyncio.FIRST_COMPLETED)
            if not start.done():
                start.cancel()
                await asyncio.gather(start, return_exceptions=True)
                return
            stopped.cancel()
            start.result()
            self._say(await self.summary())
            write_addresses()
            await stop.wait()
            self._say("stopping ...")
        finally:
            watcher.cancel()
            await self.stop()
