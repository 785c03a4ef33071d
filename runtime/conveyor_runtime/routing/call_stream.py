"""A caller's side of one replica's call stream (`protocol.call_stream`): small ModelInfer calls as messages.

`CallStream.call` gives a future that ends as the unary call would have: with the response, or with a
`grpc.aio.AioRpcError` of the same status (DEADLINE_EXCEEDED at the timeout, a failure the replica answered,
a relayed step's name in the trailing metadata), so the balancer treats both kinds of call alike. Cancelling the
future (the caller gave up, the replica was ejected) sends the replica a cancel message. When the stream ends or
breaks, every call still on it fails with UNAVAILABLE, which the balancer retries on another replica, and the
next call opens a new stream. A replica that does not serve the stream (an older image, during a rolling
update) is called unary from then on (`unsupported`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import grpc
import grpc.aio

from ..protocol import pb
from ..protocol.call_stream import CALL_STREAM_METHOD, call_id_of, cancel_message, failure_of, tag_call, untag_call

__all__ = ["CallStream", "rpc_error"]

log = logging.getLogger(__name__)


def rpc_error(code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...] = ()) -> grpc.aio.AioRpcError:
    """The error a unary call with this outcome would have raised."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


def _identity(data: bytes) -> bytes:
    return data


class _Open:
    """One open stream: its gRPC call, the messages waiting to be written, and its calls awaiting an answer."""

    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self.call = call
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.pending: dict[int, asyncio.Future[pb.ModelInferResponse]] = {}
        self.closed = False
        self.idle = asyncio.Event()
        self.idle.set()
        self.tasks: list[asyncio.Task[None]] = []


class CallStream:
    """One replica's call stream, opened at the first call and again after it ends; see the module's docstring."""

    def __init__(self, channel: grpc.aio.Channel, address: str) -> None:
        self.address = address
        self._method = channel.stream_stream(
            CALL_STREAM_METHOD, request_serializer=_identity, response_deserializer=pb.ModelInferResponse.FromString
        )
        self._open: _Open | None = None
        self._ids = itertools.count(1)
        #: the replica answered UNIMPLEMENTED: it has no call stream, so it is called unary
        self.unsupported = False

    @property
    def pending(self) -> int:
        return len(self._open.pending) if self._open is not None else 0

    def call(self, request: pb.ModelInferRequest, timeout_s: float) -> asyncio.Future[pb.ModelInferResponse]:
        """Send `request` (serialized now, so the caller may change or resend it) and return its answer's future."""
        stream = self._open if self._open is not None and not self._open.closed else self._start()
        loop = asyncio.get_running_loop()
        call_id = next(self._ids)
        tag_call(request, call_id, timeout_s)
        try:
            data = request.SerializeToString()
        finally:
            untag_call(request)
        future: asyncio.Future[pb.ModelInferResponse] = loop.create_future()
        stream.pending[call_id] = future
        stream.idle.clear()
        timer = loop.call_later(timeout_s, self._expire, future)
        future.add_done_callback(lambda done: self._settled(stream, call_id, done, timer))
        stream.outbox.put_nowait(data)
        return future

    def _start(self) -> _Open:
        stream = _Open(self._method())
        self._open = stream
        stream.tasks = [
            asyncio.ensure_future(self._write(stream)),
            asyncio.ensure_future(self._read(stream)),
        ]
        return stream

    @staticmethod
    def _expire(future: asyncio.Future[pb.ModelInferResponse]) -> None:
        if not future.done():
            future.set_exception(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))

    @staticmethod
    def _settled(stream: _Open, call_id: int, future: asyncio.Future[pb.ModelInferResponse], timer: asyncio.TimerHandle) -> None:
        timer.cancel()
        if stream.pending.pop(call_id, None) is None:
            return  # answered, or failed with the stream
        if not stream.closed and (future.cancelled() or future.exception() is not None):
            stream.outbox.put_nowait(cancel_message(call_id).SerializeToString())  # the replica may stop working on it
        if not stream.pending:
            stream.idle.set()

    async def _write(self, stream: _Open) -> None:
        try:
            while True:
                data = await stream.outbox.get()
                if data is None:
                    await stream.call.done_writing()
                    return
                await stream.call.write(data)
        except Exception as exc:  # the stream ended (its reader fails the calls on it) or was cancelled
            log.debug("call stream to %s: writing stopped: %r", self.address, exc)

    async def _read(self, stream: _Open) -> None:
        error = rpc_error(grpc.StatusCode.UNAVAILABLE, f"the call stream to {self.address} was closed")
        try:
            async for response in stream.call:
                future = stream.pending.pop(call_id_of(response), None)
                if future is None or future.done():
                    continue  # given up already
                failure = failure_of(response)
                if failure is None:
                    untag_call(response)
                    future.set_result(response)
                else:
                    future.set_exception(rpc_error(failure.code, failure.details, tuple(failure.trailing())))
                if not stream.pending:
                    stream.idle.set()
            error = rpc_error(grpc.StatusCode.UNAVAILABLE, f"replica {self.address} ended its call stream (shutting down)")
        except grpc.aio.AioRpcError as exc:
            error = self._stream_failed(exc)
        finally:
            stream.closed = True
            if self._open is stream:
                self._open = None
            stream.outbox.put_nowait(None)
            for future in stream.pending.values():
                if not future.done():
                    future.set_exception(error)
            stream.pending.clear()
            stream.idle.set()

    def _stream_failed(self, exc: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
        """What a call on a broken stream fails with: UNAVAILABLE (retried elsewhere), or the replica's refusal
        of the stream itself when it is full."""
        code = exc.code()
        if code == grpc.StatusCode.UNIMPLEMENTED:
            log.info("replica %s has no call stream (an older version?); calling it unary", self.address)
            self.unsupported = True
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return exc
        return rpc_error(grpc.StatusCode.UNAVAILABLE, f"the call stream to {self.address} failed: {code.name} {exc.details() or ''}".rstrip())

    async def close_when_idle(self, timeout_s: float) -> None:
        """Close once the calls on the stream are answered (or after `timeout_s`)."""
        stream = self._open
        if stream is not None:
            try:
                await asyncio.wait_for(stream.idle.wait(), timeout_s)
            except TimeoutError:
                pass
        await self.aclose()

    async def aclose(self) -> None:
        """End the stream now; calls still on it fail with UNAVAILABLE."""
        stream, self._open = self._open, None
        if stream is None:
            return
        stream.call.cancel()
        await asyncio.gather(*stream.tasks, return_exceptions=True)
