"""An aiohttp application served on one host and port (0 picks a free port; `port` tells which one)."""

from __future__ import annotations

from aiohttp import web

__all__ = ["HttpSite"]


class HttpSite:
    """Serves `app` from the running event loop; `start` binds, `stop` closes every connection."""

    def __init__(self, app: web.Application, host: str, port: int, *, auto_decompress: bool = True) -> None:
        self.app = app
        self.auto_decompress = auto_decompress
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Bind and serve; returns the bound port. Raises OSError when the port is taken."""
        runner = web.AppRunner(self.app, access_log=None, auto_decompress=self.auto_decompress)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
