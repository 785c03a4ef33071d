"""``host:port`` text for gRPC targets and listeners, and free local ports."""

from __future__ import annotations

import socket

__all__ = ["format_address", "free_port", "free_ports", "parse_address"]


def format_address(host: str, port: int) -> str:
    """``host:port``, with IPv6 hosts in brackets (what gRPC targets expect)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def parse_address(text: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``; raises ValueError saying what a valid address looks like."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9000), got {text!r}")
    return host.strip("[]"), int(port)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports that are free right now: every socket stays bound until all are picked, so the OS
    cannot hand one port out twice (as separate `free_port` calls, or a later bind to port 0, can)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS picks it)."""
    return free_ports(1, host)[0]
