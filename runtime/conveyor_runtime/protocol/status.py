"""The one table from Conveyor's errors to gRPC status codes and HTTP statuses, and back from a failed RPC.

Servers end a failed request with `abort_with` (gRPC) or `http_status` (REST); clients of a step or a gateway
turn an `grpc.RpcError` into a `RequestError` with `error_from_rpc`. Nothing else maps statuses.
"""

from __future__ import annotations

import grpc
import grpc.aio

from ..errors import STATUS_NAMES, RequestError, StepCallError

__all__ = ["INTERNAL_MESSAGE", "abort_with", "error_from_rpc", "fail_with", "grpc_code", "http_status"]

#: What a client sees for an unexpected error (the traceback is in the server's log).
INTERNAL_MESSAGE = "internal error; see the server's log"

#: Error messages are clipped to this: they echo client input (names, datatypes), and gRPC refuses status details
#: over its 8 KB metadata limit, which the client would see as RESOURCE_EXHAUSTED instead of the real error.
MAX_MESSAGE_CHARS = 1024

#: gRPC status name -> HTTP status of the REST API (names missing here answer 500).
_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "OUT_OF_RANGE": 400,
    "FAILED_PRECONDITION": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
}


def _status_name(error: BaseException) -> str:
    return error.status if isinstance(error, RequestError) else "INTERNAL"


def grpc_code(error: BaseException) -> grpc.StatusCode:
    """The gRPC status code for `error`; anything that is not a `RequestError` is INTERNAL."""
    return grpc.StatusCode[_status_name(error)]


def http_status(error: BaseException) -> int:
    """The HTTP status for `error` (the REST API's face of the same table)."""
    return _HTTP_STATUS.get(_status_name(error), 500)


def client_message(error: BaseException) -> str:
    """What the client is told: a `RequestError`'s message, clipped; a generic line for anything unexpected."""
    if not isinstance(error, RequestError):
        return INTERNAL_MESSAGE
    message = error.message
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 20] + " ... (message clipped)"
    return message


def fail_with(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    """Set the status for `error` on an RPC whose handler then returns (an empty message, which gRPC drops).

    Unlike `abort_with`, nothing is raised: grpc keeps the AbortError it raises, and with it every frame that held
    the request, in a reference cycle, so each refused ModelInfer request (up to 2x the size limit) lived on until
    the cycle collector ran.
    """
    context.set_code(grpc_code(error))
    context.set_details(client_message(error))


async def abort_with(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    """End an RPC with the status for `error`; unexpected errors get a generic message (log them first)."""
    await context.abort(grpc_code(error), client_message(error))


def error_from_rpc(exc: grpc.RpcError, *, step: str | None = None, hint: str = "") -> RequestError:
    """A failed call as a Conveyor error with the same status: `StepCallError` when calling a step, else
    `RequestError`; `hint` is appended to UNAVAILABLE messages (what to check next)."""
    # grpc.aio's AioRpcError and the sync channel's errors both have code() and details(), but share no base
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if callable(getattr(exc, "details", None)) else str(exc)) or ""
    name = code.name if code.name in STATUS_NAMES else "UNKNOWN"
    if name == "UNAVAILABLE" and hint:
        details = f"{details} ({hint})"
    if step is not None:
        return StepCallError(step, name, details)
    return RequestError(details or name, status=name)
