"""`conveyor bench fuzz`: the long fuzz run. Starts `conveyor run` on a manifest and sends it malformed gRPC and HTTP
requests interleaved with valid ones whose answers are checked byte for byte; reports answers by status, crashes
(replicas that died or restarted), server errors (INTERNAL/UNKNOWN/5xx), wrong or failed valid answers, and the
resident memory of the gateway and of each step replica at start, peak and end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import numpy as np
import numpy.typing as npt

from conveyor_runtime.protocol import SERVICE_NAME, pb
from conveyor_runtime.spec import load_manifest

from .fuzz_cases import GRPC_CASES, HTTP_CASES, Case, Context, HttpRequest, Valid, valid_requests
from .local_pipeline import LocalPipeline, gateway_process
from .pipeline_bench import make_payloads

__all__ = ["FuzzReport", "register", "run"]

#: Server errors: what no request, however malformed, may get.
SERVER_ERRORS = {"INTERNAL", "UNKNOWN", "DATA_LOSS", "UNIMPLEMENTED"}
#: RSS at the end may exceed RSS at the start by this much (the issue's bar).
RSS_TOLERANCE = 0.10


def register(modes: Any) -> None:
    parser: argparse.ArgumentParser = modes.add_parser(
        "fuzz", help="malformed gRPC and HTTP requests interleaved with checked valid ones: crashes, errors, memory"
    )
    parser.add_argument(
        "manifest", nargs="?", default="examples/digits/pipeline.yaml", help="pipeline to start with `conveyor run`"
    )
    parser.add_argument("--grpc", type=int, default=100_000, help="malformed gRPC requests (default 100000)")
    parser.add_argument("--http", type=int, default=50_000, help="malformed HTTP requests (default 50000)")
    parser.add_argument("--valid-every", type=int, default=10, help="one checked valid request after every N malformed (default 10)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    parser.add_argument(
        "--warmup", type=int, default=2000, help="requests of the run after which RSS is first read (default 2000)"
    )
    parser.add_argument(
        "--oversize", type=int, default=20,
        help="of the malformed requests, how many per protocol are over maxRequestBytes, spread after the warm-up (default 20)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the mutations (default 0)")
    parser.add_argument("--timeout", type=float, default=30.0, help="each request's client timeout in seconds (default 30)")
    parser.add_argument("--json", dest="json_out", help="also write every figure to this JSON file")
    parser.set_defaults(handler=run)


# --- the pipeline under test ------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    """Resident memory of a live process in MB (Linux /proc), None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


@dataclass
class Memory:
    """RSS per process: idle (before any request), at the start (after the warm-up requests), the highest seen
    while the run went on, and at the end."""

    idle: dict[str, float] = field(default_factory=dict)
    start: dict[str, float] = field(default_factory=dict)
    peak: dict[str, float] = field(default_factory=dict)
    end: dict[str, float] = field(default_factory=dict)

    def sample(self, pids: dict[str, int]) -> dict[str, float]:
        now = {name: mb for name, pid in pids.items() if (mb := rss_mb(pid)) is not None}
        for name, mb in now.items():
            self.peak[name] = max(self.peak.get(name, 0.0), mb)
        return now

    def growth(self, name: str) -> float:
        return self.end.get(name, float("nan")) / self.start[name] - 1.0


def _gateway_rss(now: dict[str, float]) -> float:
    """The RSS of the process the gateway runs in (its own, or the replica it is embedded in)."""
    name = gateway_process(now)
    return now[name] if name is not None else float("nan")


# --- sending -----------------------------------------------------------------------------------------------------


@dataclass
class FuzzReport:
    """Everything the run counted."""

    outcomes: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (protocol, case, outcome)
    valid: Counter[str] = field(default_factory=Counter)  # "exact", or what went wrong
    failures: list[str] = field(default_factory=list)  # the first failures, as examples
    crashes: list[str] = field(default_factory=list)
    sent: int = 0

    def note(self, problem: str) -> None:
        if len(self.failures) < 50:
            self.failures.append(problem[:500])

    @property
    def server_errors(self) -> int:
        return sum(n for (_, _, outcome), n in self.outcomes.items() if _is_server_error(outcome))

    @property
    def unexpected(self) -> int:
        """Malformed requests answered OK/200 by a case that must be refused."""
        return sum(n for (_, _, outcome), n in self.outcomes.items() if outcome.startswith("ACCEPTED"))

    @property
    def wrong_valid(self) -> int:
        return sum(n for what, n in self.valid.items() if what != "exact")


def _is_server_error(outcome: str) -> bool:
    return outcome in SERVER_ERRORS or outcome.startswith(("5", "client:"))


class Sender:
    """Sends requests over a pool of gRPC channels and one HTTP session; classifies each answer.

    Malformed and valid requests share kept-alive connections, as one client's requests do: a server that drops a
    connection after a bad request fails the next request on it, and that shows up here as no answer.
    """

    def __init__(self, addresses: dict[str, Any], timeout_s: float, report: FuzzReport) -> None:
        self.grpc_address, self.http_address = addresses["grpc"], addresses["http"]
        self.timeout_s = timeout_s
        self.report = report
        self.channels = [grpc.aio.insecure_channel(self.grpc_address) for _ in range(4)]
        method = f"/{SERVICE_NAME}/ModelInfer"
        self.calls = [c.unary_unary(method, request_serializer=None, response_deserializer=None) for c in self.channels]
        self.session: aiohttp.ClientSession | None = None
        self._next = 0

    async def __aenter__(self) -> Sender:
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s), auto_decompress=False, skip_auto_headers=["Content-Type"]
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        for channel in self.channels:
            await channel.close()

    async def grpc(self, message: bytes) -> tuple[str, bytes | None]:
        """(status name, serialized answer or None)."""
        self._next += 1
        call = self.calls[self._next % len(self.calls)]
        try:
            return "OK", await call(message, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, None

    async def http(self, request: HttpRequest) -> tuple[str, bytes, dict[str, str]]:
        """(status, body, lower-cased headers); no answer is 'client:<what>'."""
        assert self.session is not None
        url = f"http://{self.http_address}{request.path}"
        try:
            async with self.session.post(url, data=request.body, headers=request.headers) as response:
                body = await response.read()
                return str(response.status), body, {k.lower(): v for k, v in response.headers.items()}
        except (TimeoutError, aiohttp.ClientError) as exc:
            return f"client:{type(exc).__name__}", str(exc).encode(), {}

    async def malformed(self, case: Case, rng: random.Random, payload: npt.NDArray[Any]) -> None:
        made = case.make(rng, payload)
        body = b""
        if case.protocol == "grpc":
            assert isinstance(made.request, bytes)
            outcome, _ = await self.grpc(made.request)
            accepted = outcome == "OK"
        else:
            assert isinstance(made.request, HttpRequest)
            outcome, body, _ = await self.http(made.request)
            accepted = outcome == "200"
            if not accepted and not _is_server_error(outcome) and not body.startswith(b'{"error"'):
                self.report.note(f"HTTP {case.name}: {outcome} answer is not a JSON error: {body[:120]!r}")
        if accepted and made.must_fail:
            self.report.note(f"{case.protocol} {case.name}: a malformed request was accepted ({made.what})")
            outcome = f"ACCEPTED {outcome}"
        if _is_server_error(outcome):
            detail = body[:200].decode(errors="replace")
            self.report.note(f"{case.protocol} {case.name}: {outcome} {detail} ({made.what})")
        self.report.outcomes[(case.protocol, case.name, outcome)] += 1

    async def check_valid(self, valid: Valid) -> None:
        if isinstance(valid.request, bytes):
            outcome, answer = await self.grpc(valid.request)
            problem = valid.check_grpc(outcome, answer)
        else:
            outcome, body, headers = await self.http(valid.request)
            problem = valid.check_http(outcome, body, headers)
        self.report.valid["exact" if problem is None else problem.split(":")[0]] += 1
        if problem is not None:
            self.report.note(f"valid {valid.what}: {problem}")


async def _golden(sender: Sender, model: str, payloads: list[npt.NDArray[Any]]) -> list[pb.ModelInferResponse]:
    """Each payload's answer before any malformed traffic: what every later answer must equal, byte for byte."""
    answers = []
    for payload in payloads:
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="image", datatype="UINT8" if payload.dtype == np.uint8 else "BYTES", shape=payload.shape)
        request.raw_input_contents.append(_raw(payload))
        outcome, answer = await sender.grpc(request.SerializeToString())
        if outcome != "OK" or answer is None:
            raise SystemExit(f"the pipeline refused a valid request before any fuzzing: {outcome}")
        answers.append(pb.ModelInferResponse.FromString(answer))
    return answers


def _raw(payload: npt.NDArray[Any]) -> bytes:
    if payload.dtype == object:
        return b"".join(len(item).to_bytes(4, "little") + bytes(item) for item in payload.reshape(-1))
    return np.ascontiguousarray(payload).tobytes()


def _plan(args: argparse.Namespace, rng: random.Random) -> list[str]:
    """The order of the run: "grpc" or "http" for a malformed request ("... oversize" for one over the size limit:
    as many as --oversize per protocol, evenly spread after the warm-up), "valid" after every `valid_every`."""
    kinds = ["grpc"] * args.grpc + ["http"] * args.http
    rng.shuffle(kinds)
    for protocol in ("grpc", "http"):
        positions = [i for i, kind in enumerate(kinds) if kind == protocol and i >= args.warmup]
        count = min(args.oversize, len(positions))
        for n in range(count):
            kinds[positions[n * len(positions) // count]] = f"{protocol} oversize"
    plan: list[str] = []
    for index, kind in enumerate(kinds):
        plan.append(kind)
        if args.valid_every and (index + 1) % args.valid_every == 0:
            plan.append("valid")
    return plan


def _pick(cases: list[Case], rng: random.Random, oversize: bool) -> Case:
    """A case at random by weight; an oversize one exactly when `oversize` (the plan places those)."""
    chosen = [c for c in cases if c.oversize == oversize]
    return rng.choices(chosen, weights=[c.weight for c in chosen])[0]


async def _run(args: argparse.Namespace, pipeline: LocalPipeline, report: FuzzReport, memory: Memory) -> None:
    manifest = load_manifest(Path(args.manifest))
    model = manifest.metadata.name
    queues = [s.batching.maxQueueSize for s in manifest.spec.steps if s.batching.maxBatchSize]
    context = Context(model, manifest.spec.gateway.maxRequestBytes, max(queues, default=1024))
    payloads = [p for rows in (1, 2, 3, 4) for p in make_payloads(manifest, "auto", rows, (320, 240), count=4, seed=rows)]
    rng = random.Random(args.seed)
    for case in GRPC_CASES + HTTP_CASES:
        case.context = context
    plan = _plan(args, rng)
    pids = pipeline.pids()
    restarts_before = pipeline.restarts()
    memory.idle = memory.sample(pids)
    async with Sender(pipeline.addresses(), args.timeout, report) as sender:
        golden = await _golden(sender, model, payloads)
        valids = valid_requests(model, payloads, golden)
        queue: asyncio.Queue[str] = asyncio.Queue()
        for item in plan:
            queue.put_nowait(item)
        started = time.monotonic()

        async def worker(seed: int) -> None:
            local = random.Random(seed)
            while not queue.empty():
                kind = queue.get_nowait()
                payload = payloads[local.randrange(len(payloads))]
                if kind == "valid":
                    await sender.check_valid(valids[local.randrange(len(valids))])
                else:
                    protocol, _, oversize = kind.partition(" ")
                    case = _pick(GRPC_CASES if protocol == "grpc" else HTTP_CASES, local, bool(oversize))
                    await sender.malformed(case, local, payload)
                report.sent += 1

        async def monitor() -> None:
            last = started
            while True:
                await asyncio.sleep(0.5)
                now = memory.sample(pids)
                if not memory.start and report.sent >= args.warmup:
                    memory.start = now
                    print(f"RSS after {report.sent} requests (MB): " + ", ".join(f"{n} {mb:.0f}" for n, mb in now.items()), flush=True)
                if time.monotonic() - last < 10.0:
                    continue
                last = time.monotonic()
                elapsed = last - started
                print(
                    f"  {report.sent}/{len(plan)} requests ({report.sent / elapsed:.0f}/s): {report.server_errors} server "
                    f"errors, {report.wrong_valid} wrong or failed valid answers, "
                    f"{report.unexpected} malformed accepted; gateway RSS {_gateway_rss(now):.0f} MB",
                    flush=True,
                )

        watcher = asyncio.create_task(monitor())
        try:
            await asyncio.gather(*(worker(args.seed * 1000 + i) for i in range(args.concurrency)))
        finally:
            watcher.cancel()
        print(f"sent {report.sent} requests in {time.monotonic() - started:.0f}s", flush=True)
    await asyncio.sleep(3.0)  # let the servers settle before the final reading
    memory.end = memory.sample(pids)
    memory.start = memory.start or memory.idle
    report.crashes = _crashes(pipeline, pids, restarts_before)


def _crashes(pipeline: LocalPipeline, pids: dict[str, int], restarts_before: dict[str, int]) -> list[str]:
    """Processes that died or were restarted during the run."""
    crashes = []
    if pipeline.process.poll() is not None:
        crashes.append(f"conveyor run (gateway) exited with {pipeline.process.returncode}")
        return crashes
    now = pipeline.pids()
    for name, pid in pids.items():
        if now.get(name) != pid or rss_mb(pid) is None:
            crashes.append(f"{name}: pid {pid} is gone (now {now.get(name)})")
    for name, count in pipeline.restarts().items():
        if count != restarts_before.get(name, 0):
            crashes.append(f"{name}: restarted {count - restarts_before.get(name, 0)} time(s)")
    return crashes


# --- the command ----------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    manifest = Path(args.manifest).resolve()
    args.manifest = str(manifest)
    report, memory = FuzzReport(), Memory()
    with tempfile.TemporaryDirectory(prefix="conveyor-fuzz-") as workdir:
        pipeline = LocalPipeline.start(manifest, Path(workdir))
        try:
            print(
                f"fuzzing {pipeline.addresses()['grpc']} (gRPC) and {pipeline.addresses()['http']} (HTTP): "
                f"{args.grpc} + {args.http} malformed requests, a checked valid one after every {args.valid_every}",
                flush=True,
            )
            asyncio.run(_run(args, pipeline, report, memory))
        finally:
            log = pipeline.log_path.read_text(errors="replace")
            pipeline.stop()
    return _summary(args, report, memory, log)


def _tracebacks(log: str) -> Counter[str]:
    """The errors the pipeline logged with a traceback, by the last line of each (a chain counts once)."""
    found: Counter[str] = Counter()
    lines = log.splitlines()
    for index, line in enumerate(lines):
        if not line.startswith("Traceback (most recent call last)"):
            continue
        end = index + 1
        while end < len(lines) and lines[end].startswith((" ", "\t")):
            end += 1
        chained = any(text.startswith(("The above exception", "During handling of the above")) for text in lines[end + 1 : end + 4])
        if not chained:
            found[lines[end][:160] if end < len(lines) else "?"] += 1
    return found


def _summary(args: argparse.Namespace, report: FuzzReport, memory: Memory, log: str) -> int:
    by_code: Counter[str] = Counter()
    for (protocol, _, outcome), n in report.outcomes.items():
        by_code[f"{protocol} {outcome}"] += n
    crashes = report.crashes
    print()
    print("malformed requests by answer:")
    for key, n in sorted(by_code.items()):
        print(f"  {key:<32} {n}")
    print("valid requests: " + ", ".join(f"{k} {n}" for k, n in sorted(report.valid.items())))
    print(f"crashes (replicas that died or restarted): {len(crashes)}" + "".join(f"\n  {c}" for c in crashes))
    print(f"server errors (INTERNAL/UNKNOWN/5xx/no answer): {report.server_errors}")
    print(f"wrong or failed valid answers: {report.wrong_valid}")
    print(f"malformed requests accepted (OK/200 where an error was due): {report.unexpected}")
    print(f"RSS (MB)            idle   start    peak     end   end/start   (start: after {args.warmup} requests)")
    rss_ok = True
    for name in memory.start:
        growth = memory.growth(name)
        rss_ok &= growth <= RSS_TOLERANCE
        print(
            f"  {name:<16} {memory.idle.get(name, float('nan')):7.0f} {memory.start[name]:7.0f} {memory.peak.get(name, 0):7.0f} {memory.end.get(name, float('nan')):7.0f}"
            f"   {100 * (1 + growth):5.1f}%"
        )
    if report.failures:
        print("first failures:")
        for failure in report.failures[:20]:
            print(f"  {failure}")
    tracebacks = _tracebacks(log)
    print(f"tracebacks in the pipeline's log: {sum(tracebacks.values())}" + "".join(f"\n  {n:6d}  {e}" for e, n in tracebacks.most_common(10)))
    passed = not crashes and not report.server_errors and not report.wrong_valid and rss_ok
    print(f"result: {'PASS' if passed else 'FAIL'} (0 crashes, 0 server errors, 0 wrong valid answers, RSS within {RSS_TOLERANCE:.0%})")
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "command": " ".join(sys.argv),
                    "answers": dict(by_code),
                    "by_case": {f"{p} {c} {o}": n for (p, c, o), n in sorted(report.outcomes.items())},
                    "valid": dict(report.valid),
                    "crashes": crashes,
                    "server_errors": report.server_errors,
                    "wrong_valid": report.wrong_valid,
                    "malformed_accepted": report.unexpected,
                    "rss_mb": {"idle": memory.idle, "start": memory.start, "peak": memory.peak, "end": memory.end},
                    "failures": report.failures,
                    "log_tracebacks": dict(tracebacks),
                    "passed": passed,
                },
                indent=2,
            )
        )
    return 0 if passed else 1
