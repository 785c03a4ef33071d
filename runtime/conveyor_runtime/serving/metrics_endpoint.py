"""Prometheus `/metrics` for one registry, served by aiohttp on the process's event loop (steps and gateway alike)."""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .http_site import HttpSite

__all__ = ["MetricsEndpoint", "metrics_app"]

log = logging.getLogger(__name__)


def metrics_app(registry: CollectorRegistry) -> web.Application:
    """An application answering GET /metrics with `registry`'s exposition text."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


class MetricsEndpoint(HttpSite):
    """`/metrics` on `host:port` (0 picks a free port; read `port` after `start`)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        super().__init__(metrics_app(registry), host, port)

    async def start(self) -> int:
        port = await super().start()
        log.info("metrics on http://%s:%d/metrics", self.host, port)
        return port
