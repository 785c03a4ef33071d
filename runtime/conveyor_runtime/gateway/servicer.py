"""The gateway's `inference.GRPCInferenceService`: the pipeline as one model; converts and delegates to the executor."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import grpc.aio

from ..errors import InvalidRequest, RequestError, StepCallError
from ..protocol import MODEL_VERSION, ModelServicerBase, TensorInfo, abort_with, add_wire_tensors, pb, wire_tensors
from .executor import PipelineExecutor

__all__ = ["GatewayServicer"]

log = logging.getLogger(__name__)


class GatewayServicer(ModelServicerBase):
    """`inference.GRPCInferenceService` for the pipeline: converts messages and delegates to the executor.

    The HTTP face (`gateway.http`) reuses its model identity, readiness and metadata.
    """

    extensions = ("binary_tensor_data",)

    def __init__(self, executor: PipelineExecutor) -> None:
        self.executor = executor

    @property
    def model_name(self) -> str:
        return self.executor.name

    @property
    def platform(self) -> str:
        return "conveyor_pipeline"

    @property
    def is_ready(self) -> bool:
        return self.executor.ready

    async def tensor_metadata(self) -> tuple[Sequence[TensorInfo], Sequence[TensorInfo]]:
        return await self.executor.metadata()

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        try:
            self.check_model(request.model_name, request.model_version)
            inputs = wire_tensors(request)
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            requested = [o.name for o in request.outputs]
            outputs = await self.executor.infer(inputs, deadline=deadline, outputs=requested, request_id=request.id)
        except RequestError as exc:
            if not isinstance(exc, (StepCallError, InvalidRequest)):
                log.info("request %s failed: %s", request.id or "-", exc)
            await abort_with(context, exc)
            raise  # unreachable: abort raises
        except Exception as exc:
            log.exception("request %s failed unexpectedly", request.id or "-")
            await abort_with(context, exc)
            raise
        response = pb.ModelInferResponse(model_name=self.executor.name, model_version=MODEL_VERSION, id=request.id)
        add_wire_tensors(response, outputs)
        return response
