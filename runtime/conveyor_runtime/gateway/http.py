"""The gateway's HTTP/REST face: Open Inference Protocol v2 routes served by aiohttp (codec: `protocol.rest`)."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..errors import InvalidRequest, RequestError
from ..protocol import (
    HEADER_LENGTH,
    MODEL_VERSION,
    client_message,
    http_status,
    parse_infer_request,
    render_infer_response,
    request_options,
)
from ..version import __version__
from .servicer import GatewayServicer

__all__ = ["create_http_app"]

log = logging.getLogger(__name__)


class _TooLarge(InvalidRequest):
    """A body over spec.gateway.maxRequestBytes: INVALID_ARGUMENT, answered over HTTP as 413."""


def _error(exc: BaseException) -> web.Response:
    status = 413 if isinstance(exc, _TooLarge) else http_status(exc)
    return web.json_response({"error": client_message(exc)}, status=status)


def _inflater(encoding: str, body: bytes) -> Any:
    if encoding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":  # RFC 9110 says zlib-wrapped; some clients send raw deflate
        zlib_header = len(body) >= 2 and (body[0] & 0x0F) == 8 and (body[0] << 8 | body[1]) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
    raise InvalidRequest(f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or an uncompressed body")


def decompressed(body: bytes, content_encoding: str, limit: int) -> bytes:
    """`body` decoded per its Content-Encoding, never growing past `limit` bytes in memory.

    The gateway decompresses bodies itself instead of letting aiohttp do it while reading: aiohttp's parser
    left the handler waiting forever on a truncated deflate stream and closed kept-alive connections after a
    corrupt one. Here a bad body is just a 400, and the connection carries on.
    """
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    inflater = _inflater(encoding, body)
    try:
        data: bytes = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"cannot decompress the request body (Content-Encoding {encoding}): {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise _TooLarge(
            f"the request body is over the gateway's limit of {limit} bytes (spec.gateway.maxRequestBytes), "
            "after decompression; send fewer rows per request"
        )
    if not inflater.eof:
        raise InvalidRequest(f"the request body is cut short: its {encoding} stream does not end")
    return data


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The request body as sent, then decompressed (bounded) when Content-Encoding says so."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _TooLarge(
            f"the request body is over the gateway's limit of {limit} bytes (spec.gateway.maxRequestBytes); "
            "send fewer rows per request"
        ) from None
    return decompressed(body, request.headers.get("Content-Encoding", ""), limit)


def create_http_app(model: GatewayServicer, serving: Callable[[], bool] = lambda: True) -> web.Application:
    """The aiohttp application serving the same pipeline as the gRPC servicer `model`.

    `serving` answers the pod's readiness probe (`/gateway/ready`): whether this gateway takes requests at all,
    true while it runs and false once it drains. The standard `/v2/health/ready` keeps its Open Inference
    Protocol meaning (every step ready), so one step's outage does not take the gateway out of its Service:
    clients get UNAVAILABLE naming the step instead of a refused connection.
    """
    executor = model.executor
    limit = model.max_request_bytes

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def gateway_ready(request: web.Request) -> web.Response:
        up = serving()
        return web.json_response({"serving": up}, status=200 if up else 503)

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"ready": model.is_ready}, status=200 if model.is_ready else 503)

    async def server_metadata(request: web.Request) -> web.Response:
        return web.json_response({"name": model.server_name, "version": __version__, "extensions": list(model.extensions)})

    async def model_ready(request: web.Request) -> web.Response:
        try:
            model.check_model(request.match_info["name"], request.match_info.get("version", ""))
        except RequestError as exc:
            return _error(exc)
        return web.json_response({"name": model.model_name, "ready": model.is_ready}, status=200 if model.is_ready else 503)

    async def model_metadata(request: web.Request) -> web.Response:
        try:
            model.check_model(request.match_info["name"], request.match_info.get("version", ""))
        except RequestError as exc:
            return _error(exc)
        inputs, outputs = await model.tensor_metadata(model.model_name)
        return web.json_response(
            {
                "name": model.model_name,
                "versions": [MODEL_VERSION],
                "platform": model.platform,
                "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in inputs],
                "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in outputs],
            }
        )

    async def infer(request: web.Request) -> web.Response:
        size = 0
        try:
            model.check_model(request.match_info["name"], request.match_info.get("version", ""))
            body = await _read_body(request, limit)
            size = len(body)
            raw_length = request.headers.get(HEADER_LENGTH)
            if raw_length is not None and not raw_length.strip().isdigit():
                raise InvalidRequest(f"{HEADER_LENGTH} must be an integer, got {raw_length!r}")
            inputs, document = parse_infer_request(body, int(raw_length) if raw_length is not None else None)
            options = request_options(document)
            outputs = await model.infer(
                inputs, timeout_s=options.timeout_s, outputs=options.outputs, request_id=options.request_id
            )
            payload, headers = render_infer_response(executor.name, outputs, document)
        except RequestError as exc:
            return _error(exc)
        except Exception as exc:
            log.exception("HTTP infer request failed unexpectedly")
            return _error(exc)
        finally:
            model.trimmer.note(size)  # the trim runs after this request is freed
        return web.Response(body=payload, headers=headers)

    app = web.Application(client_max_size=limit)
    app.router.add_get("/gateway/ready", gateway_ready)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/models/{name}", model_metadata)
    app.router.add_get("/v2/models/{name}/versions/{version}", model_metadata)
    app.router.add_get("/v2/models/{name}/ready", model_ready)
    app.router.add_get("/v2/models/{name}/versions/{version}/ready", model_ready)
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_post("/v2/models/{name}/versions/{version}/infer", infer)
    return app
