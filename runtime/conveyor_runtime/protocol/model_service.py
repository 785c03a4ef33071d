"""The health and metadata half of `inference.GRPCInferenceService`, shared by every server here.

The gateway serves one model; a step serves its own and those of the steps running in its process (`inProcessWith`).
They differ only in `ModelInfer`, their names, readiness and tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc.aio

from ..errors import RequestError
from ..version import __version__
from .proto import open_inference_pb2 as pb
from .status import abort_with

__all__ = ["MODEL_VERSION", "ModelServicerBase", "TensorInfo"]

#: Every model served here has exactly one version.
MODEL_VERSION = "1"


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's metadata: name, datatype and shape (-1 for variable dimensions)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


class ModelServicerBase:
    """ServerLive/Ready/Metadata and ModelReady/Metadata for its models; subclasses add `ModelInfer`.

    An empty model name in a request means `model_name`, the server's own model.
    """

    #: ServerMetadata's name and extensions, ModelMetadata's platform.
    server_name = "conveyor"
    extensions: tuple[str, ...] = ()

    @property
    def model_name(self) -> str:
        raise NotImplementedError

    @property
    def platform(self) -> str:
        raise NotImplementedError

    @property
    def is_ready(self) -> bool:
        raise NotImplementedError

    def platform_of(self, model: str) -> str:
        """ModelMetadata's platform of `model` (default: `platform`)."""
        return self.platform

    @property
    def model_names(self) -> Sequence[str]:
        """Every model this server serves (`model_name` first)."""
        return (self.model_name,)

    async def tensor_metadata(self, model: str) -> tuple[Sequence[TensorInfo], Sequence[TensorInfo]]:
        """(inputs, outputs) of `model` (one of `model_names`); empty while unknown."""
        raise NotImplementedError

    def check_model(self, name: str, version: str = "") -> str:
        """The model a request names (empty: `model_name`); NOT_FOUND for another name or a version but the only one."""
        model = name or self.model_name
        if model not in self.model_names:
            served = ", ".join(repr(n) for n in self.model_names)
            raise RequestError(f"unknown model {name!r}; this server serves {served}", status="NOT_FOUND")
        if version and version != MODEL_VERSION:
            raise RequestError(
                f"model {model!r} has no version {version!r}; it has version {MODEL_VERSION!r}",
                status="NOT_FOUND",
            )
        return model

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.is_ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        try:
            self.check_model(request.name, request.version)
        except RequestError as exc:
            await abort_with(context, exc)
        return pb.ModelReadyResponse(ready=self.is_ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=self.server_name, version=__version__, extensions=list(self.extensions))

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            model = self.check_model(request.name, request.version)
        except RequestError as exc:
            await abort_with(context, exc)
        return await self.metadata_of(model)

    async def metadata_of(self, model: str) -> pb.ModelMetadataResponse:
        """ModelMetadata's answer for `model`, one of `model_names`."""
        inputs, outputs = await self.tensor_metadata(model)
        response = pb.ModelMetadataResponse(name=model, versions=[MODEL_VERSION], platform=self.platform_of(model))
        for info in inputs:
            response.inputs.add(name=info.name, datatype=info.datatype, shape=info.shape)
        for info in outputs:
            response.outputs.add(name=info.name, datatype=info.datatype, shape=info.shape)
        return response
