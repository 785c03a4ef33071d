#!/usr/bin/env python3
"""Packaging checks that CI runs (scripts/test.sh): what `pip install` gives users, not what the dev venv has.

1. gencode: the committed `*_pb2.py` load, without a warning, and round-trip a message on the lowest protobuf that
   pyproject.toml admits and on the newest release of every protobuf major in its range.
2. install orders: in fresh venvs, `pip install conveyor` then `pip install tritonclient[all]`, and the reverse.
   Each venv must pass `pip check`, `conveyor --help` must list every command, and a real round trip must give
   the exact answer: `conveyor run` serves a pipeline (an ONNX model built here, then topk), and tritonclient's
   gRPC and HTTP clients and `conveyor infer` each send it one request.

    python3 scripts/check-packaging.py [gencode] [install-orders]      (both when none is named)

Only the standard library at the top level: it runs under the interpreter that makes the venvs. The `client`
sub-command runs inside a venv, where numpy, onnx and tritonclient are installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "runtime" / "conveyor_runtime" / "protocol" / "proto"
#: The client the README recommends, newest release; `[all]` pins protobuf hardest.
TRITONCLIENT = "tritonclient[all]"
#: Bounds on the waits of the round trip, so a hung server fails the check instead of CI's clock.
READY_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 60.0


def say(message: str) -> None:
    print(f"[check-packaging] {message}", flush=True)


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run `cmd`; on failure print what it said and stop the check."""
    result: subprocess.CompletedProcess[str] = subprocess.run(cmd, text=True, capture_output=True, **kwargs)
    if result.returncode != 0:
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        raise SystemExit(f"[check-packaging] FAILED ({result.returncode}): {' '.join(cmd)[:300]}")
    return result


def pip(python: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    return run([str(python), "-m", "pip", "--disable-pip-version-check", "--no-input", *args])


def protobuf_range() -> tuple[str, int, int]:
    """(floor, lowest major, highest major) of pyproject's `protobuf>=FLOOR,<MAJOR` dependency."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"protobuf\s*>=\s*([\d.]+)\s*,\s*<\s*(\d+)", requirement.strip())
        if match:
            floor, ceiling = match.group(1), int(match.group(2))
            return floor, int(floor.split(".")[0]), ceiling - 1
    raise SystemExit("[check-packaging] pyproject.toml: no `protobuf>=FLOOR,<MAJOR` in [project] dependencies")


# --- 1. gencode across protobuf versions ---------------------------------------------------------------------------

#: Loads every committed *_pb2.py by path (sys.argv[1:]) and round-trips each message type through bytes.
_LOAD_GENCODE = """
import importlib.util, sys
from google.protobuf import __version__ as version
modules = {}
for path in sys.argv[1:]:
    spec = importlib.util.spec_from_file_location(path.rpartition("/")[2][:-3], path)
    modules[spec.name] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in module.DESCRIPTOR.message_types_by_name:
        message = getattr(module, name)()
        assert type(message).FromString(message.SerializeToString()) == message, name
filled = [
    modules["open_inference_pb2"].ModelInferRequest(
        model_name="m", inputs=[{"name": "x", "datatype": "FP32", "shape": [1, 2]}], raw_input_contents=[bytes(8)]
    ),
    modules["health_pb2"].HealthListResponse(statuses={"step": modules["health_pb2"].HealthCheckResponse(status=2)}),
]
for message in filled:
    assert type(message).FromString(message.SerializeToString()) == message, type(message).__name__
print(version)
"""


def check_gencode(work: Path) -> None:
    floor, low, high = protobuf_range()
    gencode = sorted(str(p) for p in PROTO_DIR.glob("*_pb2.py"))
    specs = [f"protobuf=={floor}"] + [
        f"protobuf>={floor if major == low else major},<{major + 1}" for major in range(low, high + 1)
    ]
    for spec in specs:
        target = work / re.sub(r"[^\w.]+", "_", spec)
        pip(sys.executable, "install", "--quiet", "--only-binary=:all:", "--target", str(target), spec)
        # -S: no site-packages, so only the protobuf under test is importable; -W error: a warning fails too
        env = {**os.environ, "PYTHONPATH": str(target)}
        loaded = run([sys.executable, "-S", "-W", "error", "-c", _LOAD_GENCODE, *gencode], env=env).stdout.strip()
        say(f"gencode loads and round-trips on protobuf {loaded} ({spec})")


# --- 2. install orders ---------------------------------------------------------------------------------------------


def build_wheel(work: Path) -> Path:
    """conveyor's wheel, built from a copy of the checkout's files (the build writes nothing into the checkout)."""
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT).stdout.split("\0")
    source = work / "source"
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    pip(sys.executable, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(work / "wheel"), str(source))
    (wheel,) = (work / "wheel").glob("conveyor-*.whl")
    return wheel


def check_help(venv: Path) -> None:
    """`conveyor --help` works and lists every command the wheel declares (a command that fails to import is
    dropped from the list with a warning, so the exit code alone proves nothing)."""
    result = run([str(venv / "bin" / "conveyor"), "--help"])
    listed = run([str(venv / "bin" / "python"), "-c", _COMMANDS]).stdout.split()
    missing = [name for name in listed if not re.search(rf"^\s+{re.escape(name)}\s", result.stdout, re.MULTILINE)]
    if not listed or missing or "unavailable" in result.stderr:
        sys.stdout.write(result.stdout + result.stderr)
        raise SystemExit(f"[check-packaging] FAILED: `conveyor --help` lacks command(s) {missing or listed}")


_COMMANDS = "from importlib.metadata import entry_points; print(*sorted(e.name for e in entry_points(group='conveyor.commands')))"


def check_order(work: Path, name: str, installs: list[str]) -> None:
    venv = work / name
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    for item in installs:
        started = time.monotonic()
        # --no-compile: bytecode is written on first import anyway; compiling kubernetes' thousands of modules
        # up front is a third of the check's CPU time and changes nothing pip resolves
        pip(python, "install", "--quiet", "--no-compile", item)
        say(f"{name}: pip install {Path(item).name} ({time.monotonic() - started:.0f} s)")
    started = time.monotonic()
    pip(python, "check")
    run([str(python), "-c", _EXTRA_PINS_HOLD, "tritonclient", "all"])
    versions = run([str(python), "-c", _VERSIONS]).stdout.strip()
    say(f"{name}: pip check is clean and tritonclient[all]'s pins hold; {versions}")
    check_help(venv)
    say(f"{name}: conveyor --help lists every command")
    round_trip(work, venv)
    say(
        f"{name}: conveyor run answered tritonclient (gRPC, HTTP), conveyor infer and a health Check "
        f"({time.monotonic() - started:.0f} s from the last install)"
    )


#: `pip check` reads no extra's requirements, so a protobuf outside tritonclient[all]'s pin passes it; this does not.
_EXTRA_PINS_HOLD = """
import sys
from importlib.metadata import PackageNotFoundError, distribution, version
from packaging.requirements import Requirement
name, extra = sys.argv[1:]
broken = []
for text in distribution(name).requires or []:
    requirement = Requirement(text)
    if requirement.marker is None or not requirement.marker.evaluate({"extra": extra}):
        continue
    try:
        installed = version(requirement.name)
    except PackageNotFoundError:
        installed = None
    if installed is None or not requirement.specifier.contains(installed, prereleases=True):
        broken.append(f"{name}[{extra}] requires {requirement}, installed: {installed}")
sys.exit("\\n".join(broken) or None)
"""

_VERSIONS = (
    "from importlib.metadata import version as v; "
    "print(', '.join(f'{p} {v(p)}' for p in ('protobuf', 'grpcio', 'onnx', 'onnxruntime', 'tritonclient')))"
)


def round_trip(work: Path, venv: Path) -> None:
    """`conveyor run` in the background; the `client` sub-command (inside the venv) checks its answers."""
    place = work / f"{venv.name}-pipeline"
    place.mkdir()
    python = str(venv / "bin" / "python")
    run([python, __file__, "client", "--prepare", str(place)])
    addresses = place / "addresses.json"
    log = (place / "conveyor-run.log").open("w")
    server = subprocess.Popen(
        [str(venv / "bin" / "conveyor"), "run", "pipeline.yaml", "--grpc-port", "0", "--http-port", "0",
         "--addresses-json", str(addresses), "--grace", "5"],
        cwd=place, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        client = subprocess.run([python, __file__, "client", "--check", str(place)], text=True, capture_output=True)
        if client.returncode != 0:
            sys.stdout.write(client.stdout + client.stderr)
            raise SystemExit(f"[check-packaging] FAILED: round trip in {venv.name}; conveyor run said:\n" + _tail(place))
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()


def _tail(place: Path) -> str:
    return "\n".join((place / "conveyor-run.log").read_text(errors="replace").splitlines()[-40:])


# --- inside a venv: the pipeline and its client ----------------------------------------------------------------------

MANIFEST = """\
apiVersion: conveyor.dev/v1alpha1
kind: InferencePipeline
metadata:
  name: packaging
spec:
  steps:
  - name: classify
    model: {path: linear.onnx}
  - name: postprocess
    op: topk
    config: {k: 2}
"""


def _weights() -> tuple[Any, Any]:
    """The model's weights [4,3] and the request's rows [5,4], the same in every process."""
    import numpy as np

    rng = np.random.default_rng(7)
    return rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)


def client_prepare(place: Path) -> None:
    """The pipeline's manifest, its model (logits = x @ W, built with onnx) and the request tensor."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights, batch = _weights()
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(place / "linear.onnx"))
    (place / "pipeline.yaml").write_text(MANIFEST)
    np.save(place / "batch.npy", batch)


def client_check(place: Path) -> None:
    """Wait for the pipeline, then one request each from tritonclient.grpc, tritonclient.http and `conveyor infer`,
    and a grpc.health.v1 Check through the runtime's own health stub."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    weights, batch = _weights()
    logits = batch @ weights
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    indices = np.argsort(-expected, axis=1, kind="stable")[:, :2]
    scores = np.take_along_axis(expected, indices, axis=1)

    deadline = time.monotonic() + READY_TIMEOUT_S
    addresses: dict[str, str] = {}
    while True:
        try:
            addresses = json.loads((place / "addresses.json").read_text())
            if grpcclient.InferenceServerClient(addresses["grpc"]).is_model_ready("packaging"):
                break
        except (OSError, ValueError, KeyError, grpcclient.InferenceServerException):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the pipeline was not ready within {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.5)

    def same(source: str, got_scores: Any, got_indices: Any) -> None:
        if not (np.array_equal(got_indices, indices) and np.allclose(got_scores, scores, rtol=1e-5, atol=1e-6)):
            raise SystemExit(f"{source}: wrong answer: scores {got_scores}, indices {got_indices}; expected {scores}, {indices}")

    grpc_client = grpcclient.InferenceServerClient(addresses["grpc"])
    tensor = grpcclient.InferInput("x", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    result = grpc_client.infer("packaging", [tensor], client_timeout=REQUEST_TIMEOUT_S)
    same("tritonclient.grpc", result.as_numpy("scores"), result.as_numpy("indices"))

    http_client = httpclient.InferenceServerClient(addresses["http"], network_timeout=REQUEST_TIMEOUT_S)
    tensor = httpclient.InferInput("x", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    result = http_client.infer("packaging", [tensor])
    same("tritonclient.http", result.as_numpy("scores"), result.as_numpy("indices"))

    # the runtime's own grpc.health.v1 messages and stub, against the gateway's health service
    import grpc

    from conveyor_runtime.protocol.health import HealthStub
    from conveyor_runtime.protocol.proto import health_pb2

    with grpc.insecure_channel(addresses["grpc"]) as channel:
        health = HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=REQUEST_TIMEOUT_S)
    if health.status != health_pb2.HealthCheckResponse.SERVING:
        raise SystemExit(f"grpc.health.v1 Check: {health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}, not SERVING")

    conveyor = Path(sys.executable).parent / "conveyor"
    infer = subprocess.run(
        [str(conveyor), "infer", str(place / "batch.npy"), "--url", addresses["grpc"], "--json"],
        text=True, capture_output=True, timeout=REQUEST_TIMEOUT_S,
    )  # fmt: skip
    if infer.returncode != 0:
        raise SystemExit(f"conveyor infer failed ({infer.returncode}):\n{infer.stdout}{infer.stderr}")
    answer = json.loads(infer.stdout)
    same("conveyor infer", np.asarray(answer["scores"]), np.asarray(answer["indices"]))


CHECKS = ("gencode", "install-orders")


def main(argv: list[str]) -> int:
    if argv[:1] == ["client"]:
        parser = argparse.ArgumentParser(prog="check-packaging.py client", description="(inside a venv) the round trip")
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--prepare", type=Path, metavar="DIR", help="write the manifest, model and request to DIR")
        group.add_argument("--check", type=Path, metavar="DIR", help="wait for the pipeline of DIR and check its answers")
        args = parser.parse_args(argv[1:])
        client_prepare(args.prepare) if args.prepare else client_check(args.check)
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checks", nargs="*", metavar="CHECK", help=f"any of {', '.join(CHECKS)} (default: all)")
    checks = parser.parse_args(argv).checks or list(CHECKS)
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        parser.error(f"unknown check(s) {unknown}; known: {', '.join(CHECKS)}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="conveyor-packaging-") as tmp:
        work = Path(tmp)
        if "gencode" in checks:
            check_gencode(work)
        if "install-orders" in checks:
            wheel = str(build_wheel(work))
            orders = {"conveyor-then-tritonclient": [wheel, TRITONCLIENT], "tritonclient-then-conveyor": [TRITONCLIENT, wheel]}
            # side by side: each is mostly one pip process waiting on the index, unpacking or a single core
            with ThreadPoolExecutor(len(orders)) as pool:
                futures = [pool.submit(check_order, work, name, installs) for name, installs in orders.items()]
            failures = [str(f.exception()) for f in futures if f.exception() is not None]
            if failures:
                raise SystemExit("\n".join(failures))
    say(f"all passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
