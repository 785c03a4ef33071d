"""Where a step's replicas are: a static address list, or the DNS A records of a headless Service, re-resolved.

`watch_endpoints` runs a source and reports each change of the address set, so replicas that come and go are
picked up without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from ..errors import UsageError
from ..serving import format_address, parse_address

__all__ = ["DnsEndpoints", "EndpointSource", "StaticEndpoints", "parse_endpoints", "watch_endpoints"]

log = logging.getLogger(__name__)


def parse_endpoints(values: Sequence[str], option: str) -> dict[str, list[str]]:
    """``STEP=HOST:PORT[,HOST:PORT...]`` command-line values -> {step: [address, ...]}; repeated steps add addresses."""
    result: dict[str, list[str]] = {}
    for value in values:
        step, sep, addresses = value.partition("=")
        if not sep or not step or not addresses:
            raise UsageError(f"{option}: expected STEP=HOST:PORT[,HOST:PORT...], got {value!r}")
        for address in addresses.split(","):
            try:
                parse_address(address)
            except ValueError as exc:
                raise UsageError(f"{option} {step}: {exc}") from None
            result.setdefault(step, []).append(address.strip())
    return result


class EndpointSource(Protocol):
    """Something that lists a step's replica addresses; `refresh_s` is None when the list never changes."""

    refresh_s: float | None

    async def resolve(self) -> list[str]: ...

    def describe(self) -> str: ...


class StaticEndpoints:
    """A fixed list of ``host:port`` addresses (local runs, tests, `--endpoints`)."""

    refresh_s: float | None = None

    def __init__(self, addresses: Sequence[str]) -> None:
        for address in addresses:
            parse_address(address)
        self.addresses = list(dict.fromkeys(addresses))

    async def resolve(self) -> list[str]:
        return list(self.addresses)

    def describe(self) -> str:
        return ",".join(self.addresses) or "(none)"


class DnsEndpoints:
    """Every address a name resolves to (a headless Service gives one A record per ready pod), on one port."""

    def __init__(self, host: str, port: int, refresh_s: float = 5.0) -> None:
        if refresh_s <= 0:
            raise ValueError(f"refresh_s must be > 0, got {refresh_s}")
        self.host = host
        self.port = port
        self.refresh_s: float | None = refresh_s

    async def resolve(self) -> list[str]:
        """The current addresses; [] when the name does not exist (no ready pod). Other failures raise OSError."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                return []
            raise
        return sorted({format_address(str(info[4][0]), self.port) for info in infos})

    def describe(self) -> str:
        return f"dns:{self.host}:{self.port}"


async def watch_endpoints(
    source: EndpointSource, on_change: Callable[[list[str]], Awaitable[None] | None]
) -> None:
    """Resolve `source` now and every `refresh_s`, calling `on_change` whenever the address set changes.

    Returns after the first resolution for a static source; otherwise runs until cancelled. A failed lookup
    (DNS down) keeps the last known addresses: health checks, not DNS hiccups, take replicas out.
    """
    current: list[str] | None = None
    last_error = ""
    while True:
        try:
            addresses = await source.resolve()
        except OSError as exc:
            message = f"cannot resolve {source.describe()}: {exc}"
            if message != last_error:
                log.warning("%s; keeping the last known addresses and retrying every %ss", message, source.refresh_s)
                last_error = message
            addresses = current if current is not None else []
        else:
            last_error = ""
        if addresses != current:
            current = addresses
            log.info("endpoints of %s: %s", source.describe(), ", ".join(addresses) or "(none)")
            result = on_change(list(addresses))
            if result is not None:
                await result
        if source.refresh_s is None:
            return
        await asyncio.sleep(source.refresh_s)
