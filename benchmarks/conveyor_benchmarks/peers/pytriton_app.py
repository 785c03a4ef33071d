"""PyTriton peer: the three steps as three Triton models served by PyTriton's bundled tritonserver (CPU), chained by
the client.

``classify`` is dynamically batched (``max_batch_size``, ``max_queue_delay_microseconds`` from the manifest) with one
callable instance per Conveyor model instance, each its own ONNX Runtime session; ``preprocess`` and ``postprocess``
are unbatched models with an instance per manifest replica. PyTriton has no ensembles, and a pipeline model calling
the others through ``ModelClient`` would add a fourth model and a hop per step, so the client chains the calls:
preprocess -> classify -> postprocess over tritonclient's gRPC asyncio client (its CPU shows in the client column).
Runs as ``python -m conveyor_benchmarks.peers.pytriton_app`` until SIGTERM, with this interpreter's libpython first on
``LD_LIBRARY_PATH`` (`stub_library_path`): Triton's Python-backend stub links ``libpython3.X.so.1.0``, and where the
system has an older one of the same minor (Debian's 3.11.2 beside a pyenv 3.11.7) the stub would mix that C core with
this interpreter's stdlib, and every multi-instance model fails to load (``RLock`` has no ``_recursion_count``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import sysconfig
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .plan import PeerPlan, peer_plan
from .server_process import ServerProcess, free_port, wait_for_stop, write_ready
from .system import ServedSystem
from .work import answer_labels

__all__ = ["PyTritonSystem", "TritonModel", "main", "stub_library_path", "triton_models"]

INSTALL_HINT = "PyTriton is not installed: pip install 'conveyor[peers]' (or drop pytriton from --systems)"


@dataclass(frozen=True)
class TritonModel:
    """One bound model: its name, instances, and batching (max_batch 0 = unbatched)."""

    name: str
    instances: int
    max_batch: int = 0
    queue_delay_us: int = 0


def triton_models(plan: PeerPlan) -> list[TritonModel]:
    """The three models, in call order."""
    return [
        TritonModel("preprocess", plan.preprocess.replicas),
        TritonModel("classify", plan.instances, plan.max_batch, round(plan.queue_delay_s * 1e6)),
        TritonModel("postprocess", plan.postprocess.replicas),
    ]


def stub_library_path(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for the server: ``LD_LIBRARY_PATH`` led by this interpreter's libpython directory, if it has one."""
    env = dict(os.environ if environ is None else environ)
    libdir = sysconfig.get_config_var("LIBDIR")
    library = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    if libdir and Path(libdir, library).exists():
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def _bind_all(triton: Any, plan: PeerPlan) -> None:
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    from .work import load_classifier, load_op_step, run_op

    pre, classify, post = triton_models(plan)

    def preprocess_fn() -> Any:
        op = load_op_step(plan, plan.preprocess)

        def infer(requests: list[Any]) -> list[dict[str, npt.NDArray[Any]]]:
            # PyTriton hands BYTES over as numpy bytes_; the op takes object arrays of encoded images
            return [
                run_op(op, {"image": r["image"].astype(object) if r["image"].dtype.kind == "S" else r["image"]}) for r in requests
            ]

        return infer

    def classify_fn() -> Any:
        op = load_classifier(plan)
        op.warm_up([1, plan.max_batch])

        @batch  # type: ignore[untyped-decorator, misc, unused-ignore]
        def infer(image: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[Any]]:
            return op.process({"image": image})

        return infer

    def postprocess_fn() -> Any:
        op = load_op_step(plan, plan.postprocess)

        def infer(requests: list[Any]) -> list[dict[str, npt.NDArray[Any]]]:
            answers = []
            for r in requests:
                out = run_op(op, {"logits": r["logits"]})
                answers.append({"labels": np.char.encode(out["labels"].astype(str), "utf-8"), "scores": out["scores"]})
            return answers

        return infer

    unbatched = ModelConfig(batching=False)
    triton.bind(
        model_name=pre.name,
        infer_func=[preprocess_fn() for _ in range(pre.instances)],
        inputs=[Tensor(name="image", dtype=bytes, shape=(-1,))],
        outputs=[Tensor(name="image", dtype=np.float32, shape=(-1, -1, -1, -1))],
        config=unbatched,
    )
    triton.bind(
        model_name=classify.name,
        infer_func=[classify_fn() for _ in range(classify.instances)],
        inputs=[Tensor(name="image", dtype=np.float32, shape=(-1, -1, -1))],
        outputs=[Tensor(name="logits", dtype=np.float32, shape=(-1,))],
        config=ModelConfig(
            max_batch_size=classify.max_batch,
            batcher=DynamicBatcher(max_queue_delay_microseconds=classify.queue_delay_us),
        ),
    )
    triton.bind(
        model_name=post.name,
        infer_func=[postprocess_fn() for _ in range(post.instances)],
        inputs=[Tensor(name="logits", dtype=np.float32, shape=(-1, -1))],
        outputs=[Tensor(name="labels", dtype=bytes, shape=(-1, -1)), Tensor(name="scores", dtype=np.float32, shape=(-1, -1))],
        config=unbatched,
    )


def main(argv: list[str] | None = None) -> None:
    """The server process: PyTriton with the three models, gRPC on `--grpc-port`; runs until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m conveyor_benchmarks.peers.pytriton_app")
    parser.add_argument("manifest")
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--ready", required=True)
    args = parser.parse_args(argv)
    from importlib.metadata import version

    from pytriton.triton import Triton, TritonConfig

    plan = peer_plan(Path(args.manifest))
    config = TritonConfig(
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        http_address="127.0.0.1",
        http_port=args.http_port,
        allow_metrics=False,
        log_verbose=0,
    )
    triton = Triton(config=config)
    try:
        _bind_all(triton, plan)
        triton.run()
        write_ready(
            Path(args.ready),
            {
                "grpc_port": args.grpc_port,
                "pytriton": version("nvidia-pytriton"),
                "models": [m.__dict__ for m in triton_models(plan)],
            },
        )
        wait_for_stop()
    finally:
        triton.stop()


class PyTritonSystem(ServedSystem):
    """``pytriton``: the server process above; each client request is three gRPC calls (tritonclient.grpc.aio)."""

    name = "pytriton"

    def __init__(self, plan: PeerPlan, payloads: list[npt.NDArray[Any]], rows: int) -> None:
        super().__init__(plan, payloads, rows)
        self._address = ""

    def start(self, workdir: Path) -> None:
        try:
            import pytriton  # noqa: F401
            import tritonclient.grpc.aio  # noqa: F401
        except ImportError:
            raise SystemExit(INSTALL_HINT) from None
        grpc_port, http_port = free_port(), free_port()
        args = [str(self.plan.manifest), "--grpc-port", str(grpc_port), "--http-port", str(http_port)]
        self.server = ServerProcess.start(
            self.name, "conveyor_benchmarks.peers.pytriton_app", args, workdir, env=stub_library_path()
        )
        info = self.server.info()
        self._address = f"127.0.0.1:{grpc_port}"
        models = ", ".join(
            f"{m['name']} x{m['instances']}"
            + (
                f" (dynamic batching: max_batch_size={m['max_batch']}, max_queue_delay_microseconds={m['queue_delay_us']})"
                if m["max_batch"]
                else " (unbatched)"
            )
            for m in info["models"]
        )
        self.description = (
            f"PyTriton {info['pytriton']} (bundled tritonserver, CPU): models {models}; classify instances are 1 ORT "
            f"session x {self.plan.intra_threads} thread(s) each; the client chains the three calls over "
            "tritonclient.grpc.aio"
        )


    async def _pipeline(self, client: Any, payload: npt.NDArray[Any]) -> npt.NDArray[Any]:
        from tritonclient.grpc import InferInput, InferRequestedOutput

        def tensor(name: str, array: npt.NDArray[Any], datatype: str) -> Any:
            value = InferInput(name, list(array.shape), datatype)
            value.set_data_from_numpy(array)
            return value

        first = tensor("image", payload, "BYTES" if payload.dtype == np.object_ else "UINT8")
        images = (await client.infer("preprocess", [first])).as_numpy("image")
        logits = (await client.infer("classify", [tensor("image", images, "FP32")])).as_numpy("logits")
        answer = await client.infer("postprocess", [tensor("logits", logits, "FP32")], outputs=[InferRequestedOutput("labels")])
        return answer.as_numpy("labels")  # type: ignore[no-any-return]

    async def labels(self, payload: npt.NDArray[Any]) -> list[list[str]]:
        from tritonclient.grpc.aio import InferenceServerClient

        async with InferenceServerClient(self._address) as client:
            return answer_labels(await self._pipeline(client, payload))

    @contextlib.asynccontextmanager
    async def calls(self, connections: int) -> AsyncIterator[Callable[[int], Awaitable[None]]]:
        """`call(n)`: the n-th payload through the three models (always over two connections, whatever `connections`)."""
        from tritonclient.grpc.aio import InferenceServerClient

        # two connections, as load.closed_loop uses for Conveyor (one HTTP/2 connection caps a client)
        clients = [InferenceServerClient(self._address) for _ in range(2)]
        try:

            async def call(n: int) -> None:
                await self._pipeline(clients[n % 2], self.payloads[n % len(self.payloads)])

            yield call
        finally:
            for client in clients:
                await client.close()


if __name__ == "__main__":
    main()
