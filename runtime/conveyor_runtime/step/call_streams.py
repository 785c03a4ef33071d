"""A step's side of the call streams (`protocol.call_stream`): each message a ModelInfer call of its own.

Each call runs in a task of its own, as a unary call would, and its answer goes back on the stream as soon as
it is ready (answers need not keep the calls' order). What gRPC does for a unary call is done here per message:
the caller's timeout cancels the call (DEADLINE_EXCEEDED), a cancel message cancels it, and calls beyond
`max_calls` on all streams together are refused with RESOURCE_EXHAUSTED (the server's `maximum_concurrent_rpcs`
counts a stream once). On drain (`drain()`, before the server stops) new calls get UNAVAILABLE, so their caller
retries another replica, and each stream ends once its calls are answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from ..protocol import FAILED_STEP_METADATA, pb
from ..protocol.call_stream import (
    CALL_STREAM_SERVICE,
    call_id_of,
    failure_answer,
    is_cancel,
    tag_answer,
    timeout_of,
    untag_call,
)

__all__ = ["CallStreams"]

log = logging.getLogger(__name__)

Infer = Callable[[pb.ModelInferRequest, Any], Awaitable[pb.ModelInferResponse]]


class _Aborted(Exception):
    """Raised by `_CallContext.abort`, as grpc's own context raises to end a handler."""


class _CallContext:
    """The part of a `grpc.aio.ServicerContext` that a ModelInfer handler uses, for one call on a stream."""

    __slots__ = ("_deadline", "code", "details", "failed_step")

    def __init__(self, timeout_s: float | None) -> None:
        self._deadline = time.monotonic() + timeout_s if timeout_s else None
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.failed_step = ""

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, str]]) -> None:
        for key, value in metadata:
            if key == FAILED_STEP_METADATA:
                self.failed_step = value

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.code, self.details = code, details
        raise _Aborted


def _parse(data: bytes) -> pb.ModelInferRequest | None:
    try:
        return pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return None


class CallStreams:
    """Serves `conveyor.CallStream/Infer` with `infer` (the step's ModelInfer) for every call on every stream."""

    def __init__(self, infer: Infer, *, max_calls: int) -> None:
        self._infer = infer
        self.max_calls = max_calls
        #: calls running now, on every stream; and calls taken since the start
        self.in_flight = 0
        self.taken = 0
        self.draining = False
        self._streams: set[_Stream] = set()

    def add_to(self, server: grpc.aio.Server) -> None:
        handler = grpc.stream_stream_rpc_method_handler(
            self._serve, request_deserializer=_parse, response_serializer=pb.ModelInferResponse.SerializeToString
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(CALL_STREAM_SERVICE, {"Infer": handler}),))

    def drain(self) -> None:
        """Refuse new calls (UNAVAILABLE: the caller retries elsewhere); end each stream once its calls are answered."""
        self.draining = True
        for stream in list(self._streams):
            stream.end_if_idle()

    async def _serve(self, requests: AsyncIterator[pb.ModelInferRequest | None], context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ModelInferResponse]:
        stream = _Stream(self)
        self._streams.add(stream)
        reader = asyncio.ensure_future(stream.read(requests))
        try:
            while True:
                answer = await stream.outbox.get()
                if answer is None:
                    return
                yield answer
        finally:
            self._streams.discard(stream)
            reader.cancel()
            stream.cancel_calls()
            await asyncio.gather(reader, return_exceptions=True)


class _Stream:
    """One caller's stream: its calls in flight by id, and the answers waiting to be written."""

    def __init__(self, service: CallStreams) -> None:
        self.service = service
        self.outbox: asyncio.Queue[pb.ModelInferResponse | None] = asyncio.Queue()
        self.calls: dict[int, asyncio.Task[None]] = {}
        self._read_all = False
        self._ended = False

    async def read(self, requests: AsyncIterator[pb.ModelInferRequest | None]) -> None:
        try:
            async for request in requests:
                if request is None:
                    log.warning("a call stream sent a message that does not parse; ignored (its call times out)")
                    continue
                self._take(request)
        except grpc.aio.AioRpcError:
            pass  # the caller went away; _serve's generator ends with the call
        finally:
            self._read_all = True
            self.end_if_idle()

    def _take(self, request: pb.ModelInferRequest) -> None:
        call_id = call_id_of(request)
        if is_cancel(request):
            running = self.calls.get(call_id)
            if running is not None:
                running.cancel()
            return
        service = self.service
        if service.draining:
            self.outbox.put_nowait(
                failure_answer(call_id, grpc.StatusCode.UNAVAILABLE, "the step is shutting down; call another replica")
            )
            return
        if service.in_flight >= service.max_calls:
            self.outbox.put_nowait(
                failure_answer(
                    call_id,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the step holds {service.in_flight} calls, its limit; retry later or add replicas",
                )
            )
            return
        timeout_s = timeout_of(request)
        untag_call(request)
        task = asyncio.ensure_future(self._run(call_id, request, timeout_s))
        self.calls[call_id] = task
        service.in_flight += 1
        service.taken += 1
        task.add_done_callback(lambda _: self._finished(call_id))

    def _finished(self, call_id: int) -> None:
        self.calls.pop(call_id, None)
        self.service.in_flight -= 1
        self.end_if_idle()

    async def _run(self, call_id: int, request: pb.ModelInferRequest, timeout_s: float | None) -> None:
        context = _CallContext(timeout_s)
        expired = False
        timer: asyncio.TimerHandle | None = None
        if timeout_s:
            task = asyncio.current_task()
            assert task is not None

            def expire() -> None:
                nonlocal expired
                expired = True
                task.cancel()

            timer = asyncio.get_running_loop().call_later(timeout_s, expire)
        try:
            response = await self._infer_one(request, context)
        except asyncio.CancelledError:
            if not expired:
                raise  # the caller gave the call up, or the stream is closing: nobody waits for an answer
            response = failure_answer(call_id, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        finally:
            if timer is not None:
                timer.cancel()
        if context.code is not None and context.code != grpc.StatusCode.OK:
            response = failure_answer(call_id, context.code, context.details, context.failed_step)
        else:
            tag_answer(response, call_id)
        self.outbox.put_nowait(response)

    async def _infer_one(self, request: pb.ModelInferRequest, context: _CallContext) -> pb.ModelInferResponse:
        try:
            return await self.service._infer(request, context)
        except _Aborted:
            return pb.ModelInferResponse()
        except Exception:
            log.exception("a streamed call %r failed unexpectedly", request.id)
            context.code, context.details = grpc.StatusCode.INTERNAL, "the step failed; see its log"
            return pb.ModelInferResponse()

    def end_if_idle(self) -> None:
        """End the stream (after the answers already queued) once no call runs and no more will come."""
        if not self._ended and not self.calls and (self._read_all or self.service.draining):
            self._ended = True
            self.outbox.put_nowait(None)

    def cancel_calls(self) -> None:
        for task in list(self.calls.values()):
            task.cancel()
