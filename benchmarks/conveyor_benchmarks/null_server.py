"""An Open Inference Protocol server that computes nothing: it reads each request's tensors and returns a fixed answer
after a fixed delay. `conveyor bench pipeline --floor` loads it as it loads the pipeline, so that the CPU it and the
load generator spend per request shows what serving over gRPC costs at the least, apart from any pipeline.

    python -m conveyor_benchmarks.null_server --answer ANSWER.pb --delay-ms 290

prints ``port N`` once it listens (on 127.0.0.1, a free port) and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import grpc.aio

from conveyor_runtime.gateway import server_options
from conveyor_runtime.protocol import add_inference_servicer, decode_tensors, pb
from conveyor_runtime.serving.event_loop import run_serving

__all__ = ["NullServicer", "main"]

_MAX_REQUEST_BYTES = 64 << 20


class NullServicer:
    """Answers every ModelInfer with `answer` (its id set to the request's) `delay_s` after decoding its inputs."""

    def __init__(self, answer: pb.ModelInferResponse, delay_s: float) -> None:
        self.answer = answer
        self.delay_s = delay_s
        self.answered = 0

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        decode_tensors(request)  # the least a server does with a request: read its tensors
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        response = pb.ModelInferResponse()
        response.CopyFrom(self.answer)
        response.id = request.id
        self.answered += 1
        return response

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="null")

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        return pb.ModelMetadataResponse(name=self.answer.model_name)


async def _serve(answer: pb.ModelInferResponse, delay_s: float) -> None:
    server = grpc.aio.server(options=server_options(_MAX_REQUEST_BYTES))
    add_inference_servicer(server, NullServicer(answer, delay_s))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port {port}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await server.stop(grace=1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conveyor_benchmarks.null_server", description=__doc__.splitlines()[0])
    parser.add_argument("--answer", required=True, help="a serialized ModelInferResponse to return to every request")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="how long each answer waits (default 0)")
    args = parser.parse_args(argv)
    answer = pb.ModelInferResponse.FromString(Path(args.answer).read_bytes())
    run_serving(_serve(answer, args.delay_ms / 1000.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
