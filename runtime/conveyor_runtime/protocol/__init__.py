"""The Open Inference Protocol (KServe v2 / Triton): messages, the gRPC service binding, tensor codecs (numpy, raw
wire, REST JSON), the status table and the health/metadata half of a servicer. Both the step and the gateway speak it.
"""

from .model_service import MODEL_VERSION, ModelServicerBase, TensorInfo
from .proto import open_inference_pb2 as pb
from .rest import HEADER_LENGTH, RequestOptions, parse_infer_request, render_infer_response, request_options
from .service import METHODS, SERVICE_NAME, InferenceServicer, InferenceStub, add_inference_servicer
from .status import (
    INTERNAL_MESSAGE,
    MAX_MESSAGE_CHARS,
    abort_with,
    client_message,
    error_from_rpc,
    fail_with,
    grpc_code,
    http_status,
)
from .tensors import (
    DATATYPES,
    MAX_TENSOR_SPAN,
    InferMessage,
    add_raw_tensor,
    checked_shape,
    datatype_of,
    decode_tensor,
    decode_tensors,
    deserialize_bytes,
    dtype_of,
    encode_tensor,
    encode_tensors,
    serialize_bytes,
    tensor_entries,
)
from .wire import WireTensor, add_wire_tensors, checked_tensor, wire_request, wire_tensors

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "INTERNAL_MESSAGE",
    "MAX_MESSAGE_CHARS",
    "MAX_TENSOR_SPAN",
    "METHODS",
    "MODEL_VERSION",
    "SERVICE_NAME",
    "InferMessage",
    "InferenceServicer",
    "InferenceStub",
    "ModelServicerBase",
    "RequestOptions",
    "TensorInfo",
    "WireTensor",
    "abort_with",
    "add_inference_servicer",
    "add_raw_tensor",
    "add_wire_tensors",
    "checked_shape",
    "checked_tensor",
    "client_message",
    "datatype_of",
    "decode_tensor",
    "decode_tensors",
    "deserialize_bytes",
    "dtype_of",
    "encode_tensor",
    "encode_tensors",
    "error_from_rpc",
    "fail_with",
    "grpc_code",
    "http_status",
    "parse_infer_request",
    "pb",
    "render_infer_response",
    "request_options",
    "serialize_bytes",
    "tensor_entries",
    "wire_request",
    "wire_tensors",
]
