"""A small synchronous Python client for a Conveyor gateway (or any Open Inference Protocol gRPC server)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from .errors import RequestError
from .protocol import METHODS, SERVICE_NAME, decode_tensors, encode_tensors, error_from_rpc, pb

__all__ = ["Client", "image_tensor"]

_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def image_tensor(images: Sequence[bytes]) -> npt.NDArray[Any]:
    """Encoded images (PNG/JPEG file contents) as a BYTES tensor of shape [N], what `image-preprocess` takes."""
    array = np.empty(len(images), dtype=object)
    array[:] = [bytes(image) for image in images]
    return array


class Client:
    """Calls one model (default: whatever the gateway serves) over gRPC; errors become `RequestError`s.

    >>> with Client("127.0.0.1:8001") as client:
    ...     outputs = client.infer({"image": pixels})
    """

    def __init__(self, url: str = "127.0.0.1:8001", model: str = "", timeout: float | None = 60.0) -> None:
        self.url = url
        self.model = model
        self.timeout = timeout
        self._channel = grpc.insecure_channel(url, options=_OPTIONS)
        self._calls = {
            name: self._channel.unary_unary(
                f"/{SERVICE_NAME}/{name}",
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )
            for name, (request_type, response_type) in METHODS.items()
        }
        self._input_names: list[str] | None = None

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return self._calls[method](request, timeout=timeout if timeout is not None else self.timeout)
        except grpc.RpcError as exc:
            hint = f"is the pipeline running at {self.url}? try `conveyor run PIPELINE.yaml`"
            raise error_from_rpc(exc, hint=hint) from None

    def ready(self) -> bool:
        try:
            return bool(self._call("ModelReady", pb.ModelReadyRequest(name=self.model), timeout=5.0).ready)
        except RequestError:
            return False

    def metadata(self) -> dict[str, Any]:
        """The model's name, inputs and outputs: {"name", "inputs": [{"name","datatype","shape"}], "outputs": [...]}."""
        response = self._call("ModelMetadata", pb.ModelMetadataRequest(name=self.model))

        def tensors(items: Any) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

        return {"name": response.name, "inputs": tensors(response.inputs), "outputs": tensors(response.outputs)}

    def input_names(self) -> list[str]:
        if self._input_names is None:
            self._input_names = [t["name"] for t in self.metadata()["inputs"]]
        return self._input_names

    def infer(
        self,
        inputs: Mapping[str, npt.NDArray[Any]] | npt.NDArray[Any],
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        """Run the model; a bare array goes to the model's only input. Returns every (or each named) output."""
        if not isinstance(inputs, Mapping):
            names = self.input_names()
            if len(names) != 1:
                raise RequestError(f"the model takes inputs {names}; pass a dict of name -> array", status="INVALID_ARGUMENT")
            inputs = {names[0]: inputs}
        request = pb.ModelInferRequest(model_name=self.model)
        encode_tensors(request, ((name, np.asarray(array)) for name, array in inputs.items()))
        for name in outputs or []:
            request.outputs.add(name=name)
        return decode_tensors(self._call("ModelInfer", request, timeout))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
