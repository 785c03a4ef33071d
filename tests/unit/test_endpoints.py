"""Endpoint sources: static lists, DNS names, and the watcher that reports changes."""

from __future__ import annotations

import asyncio

import pytest

from conveyor_runtime.gateway import DnsEndpoints, StaticEndpoints, watch_endpoints
from conveyor_runtime.serving import format_address, parse_address


def test_endpoints_parse_and_format_addresses() -> None:
    assert parse_address("10.0.0.1:9000") == ("10.0.0.1", 9000)
    assert parse_address("[::1]:9000") == ("::1", 9000)
    assert format_address("::1", 9000) == "[::1]:9000"
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address("nohost")
    with pytest.raises(ValueError):
        StaticEndpoints(["a:99999"])


async def test_endpoints_dns_resolves_localhost_and_unknown_names_to_nothing() -> None:
    assert "127.0.0.1:9000" in await DnsEndpoints("localhost", 9000).resolve()
    assert await DnsEndpoints("no-such-step.invalid", 9000).resolve() == []


async def test_endpoints_watch_reports_each_change_once() -> None:
    class Changing:
        refresh_s: float | None = 0.01

        def __init__(self) -> None:
            self.lists = [["a:1"], ["a:1"], ["a:1", "b:2"], ["b:2"]]

        async def resolve(self) -> list[str]:
            return self.lists.pop(0) if len(self.lists) > 1 else self.lists[0]

        def describe(self) -> str:
            return "changing"

    seen: list[list[str]] = []
    done = asyncio.Event()

    def on_change(addresses: list[str]) -> None:
        seen.append(addresses)
        if addresses == ["b:2"]:
            done.set()

    task = asyncio.create_task(watch_endpoints(Changing(), on_change))
    try:
        await asyncio.wait_for(done.wait(), 5)
    finally:
        task.cancel()
    assert seen == [["a:1"], ["a:1", "b:2"], ["b:2"]]


async def test_endpoints_watch_keeps_the_last_addresses_when_lookup_fails() -> None:
    class Flaky:
        refresh_s: float | None = 0.01
        calls = 0

        async def resolve(self) -> list[str]:
            self.calls += 1
            if self.calls > 1:
                raise OSError("temporary failure in name resolution")
            return ["a:1"]

        def describe(self) -> str:
            return "flaky"

    seen: list[list[str]] = []
    source = Flaky()
    task = asyncio.create_task(watch_endpoints(source, seen.append))
    try:
        for _ in range(500):
            if source.calls >= 4:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert seen == [["a:1"]]
