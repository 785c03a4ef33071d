"""A real HTTP file server for tests (aiohttp on its own loop in a thread), with the faults downloads meet.

    with http_server({"a.onnx": data}) as http:
        http.url("files/a.onnx")       # 200 with the bytes
        http.url("redirect/a.onnx")    # 302 to files/a.onnx
        http.url("slow/a.onnx")        # the bytes in 16 pieces, `slow_delay_s` apart
        http.url("drop/a.onnx")        # first `flaky_failures` requests: half the bytes, then the connection closes
        http.url("flaky/a.onnx")       # 503 for the first `flaky_failures` requests, then the bytes
        http.url("files/missing")      # 404
    http.hits["files/a.onnx"]          # requests served per path
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web

__all__ = ["HttpFileServer", "http_server"]


@dataclass
class HttpFileServer:
    files: dict[str, bytes]
    slow_delay_s: float = 0.05
    flaky_failures: int = 2
    host: str = "127.0.0.1"
    port: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    #: Set when the server stops: slow responses stop waiting.
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}/{path}"

    def _file(self, request: web.Request) -> bytes:
        kind, name = request.match_info["kind"], request.match_info["name"]
        self.hits[f"{kind}/{name}"] += 1
        if name not in self.files:
            raise web.HTTPNotFound(text=f"no file {name}")
        return self.files[name]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        data = self._file(request)
        kind = request.match_info["kind"]
        name = request.match_info["name"]
        if kind == "files":
            return web.Response(body=data, content_type="application/octet-stream")
        if kind == "redirect":
            raise web.HTTPFound(f"/files/{name}")
        if kind == "flaky" and self.hits[f"flaky/{name}"] <= self.flaky_failures:
            raise web.HTTPServiceUnavailable(text="try again")
        response = web.StreamResponse(headers={"Content-Length": str(len(data)), "Content-Type": "application/octet-stream"})
        await response.prepare(request)
        if kind == "drop" and self.hits[f"drop/{name}"] <= self.flaky_failures:
            await response.write(data[: len(data) // 2])
            assert request.transport is not None
            request.transport.close()
            return response
        piece = max(1, len(data) // 16)
        try:
            for start in range(0, len(data), piece):
                await response.write(data[start : start + piece])
                if kind == "slow":
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.closing.wait(), self.slow_delay_s)
            await response.write_eof()
        except ConnectionResetError:  # the client gave up (a stalled-server test)
            pass
        return response


@contextmanager
def http_server(files: Mapping[str, bytes], *, host: str = "127.0.0.1", **options: float) -> Iterator[HttpFileServer]:
    """Serve `files` on `host` (a free port) until the block ends."""
    server = HttpFileServer(dict(files), host=host, **options)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/{kind:files|redirect|slow|drop|flaky}/{name}", server.handle)
    runner = web.AppRunner(app)
    ready = threading.Event()

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, host, 0)
        await site.start()
        server.port = runner.addresses[0][1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="http-file-server", daemon=True)
    thread.start()
    ready.wait(30)
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(server.closing.set)
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
