"""The gateway's `inference.GRPCInferenceService`: the pipeline as one model; converts and delegates to the executor."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import grpc.aio

from ..errors import InvalidRequest, QueueFull, RequestError, StepCallError
from ..protocol import MODEL_VERSION, ModelServicerBase, TensorInfo, WireTensor, add_wire_tensors, fail_with, pb, wire_tensors
from ..serving import LargeRequestTrimmer
from .admission import Admission
from .executor import PipelineExecutor

__all__ = ["GatewayServicer"]

log = logging.getLogger(__name__)


class GatewayServicer(ModelServicerBase):
    """`inference.GRPCInferenceService` for the pipeline: converts messages and delegates to the executor.

    The HTTP face (`gateway.http`) reuses its model identity, readiness, metadata and `infer` (the entry
    limits: request size, requests in flight, default deadline).
    """

    extensions = ("binary_tensor_data",)

    def __init__(self, executor: PipelineExecutor, admission: Admission, *, max_request_bytes: int) -> None:
        self.executor = executor
        self.admission = admission
        self.max_request_bytes = max_request_bytes
        #: gives the memory of very large requests back to the OS once they are handled (see serving.memory)
        self.trimmer = LargeRequestTrimmer()

    @property
    def model_name(self) -> str:
        return self.executor.name

    @property
    def platform(self) -> str:
        return "conveyor_pipeline"

    @property
    def is_ready(self) -> bool:
        return self.executor.ready

    async def tensor_metadata(self, model: str) -> tuple[Sequence[TensorInfo], Sequence[TensorInfo]]:
        return await self.executor.metadata()

    async def infer(
        self,
        inputs: Mapping[str, WireTensor],
        *,
        timeout_s: float | None,
        outputs: Sequence[str] | None,
        request_id: str,
    ) -> dict[str, WireTensor]:
        """Run one admitted request through the pipeline; `timeout_s` None means spec.gateway's default."""
        with self.admission.admit():
            deadline = self.admission.deadline(timeout_s)
            return await self.executor.infer(inputs, deadline=deadline, outputs=outputs, request_id=request_id)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        size = request.ByteSize()
        try:
            return await self._model_infer(request, size, context)
        finally:
            self.trimmer.note(size)  # the trim runs after this request is freed

    async def _model_infer(
        self, request: pb.ModelInferRequest, size: int, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        try:
            self.check_model(request.model_name, request.model_version)
            if size > self.max_request_bytes:
                raise InvalidRequest(
                    f"the request is {size} bytes, over the gateway's limit of {self.max_request_bytes} "
                    "(spec.gateway.maxRequestBytes); send fewer rows per request"
                )
            requested = [o.name for o in request.outputs]
            outputs = await self.infer(
                wire_tensors(request), timeout_s=context.time_remaining(), outputs=requested, request_id=request.id
            )
        except RequestError as exc:
            if not isinstance(exc, (StepCallError, InvalidRequest, QueueFull)):  # QueueFull: a line per refusal
                log.info("request %s failed: %s", request.id or "-", exc)
            error: BaseException = exc
        except Exception as exc:
            log.exception("request %s failed unexpectedly", request.id or "-")
            error = exc
        else:
            response = pb.ModelInferResponse(model_name=self.executor.name, model_version=MODEL_VERSION, id=request.id)
            add_wire_tensors(response, outputs)
            return response
        # Failed outside the `except` blocks, without the error's traceback and without raising (see fail_with):
        # each would keep this frame, and the request (up to 2x maxRequestBytes), in a reference cycle.
        error.__traceback__ = None
        fail_with(context, error)
        return pb.ModelInferResponse()
