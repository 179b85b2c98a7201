"""Does a service really answer? A Kafka metadata request, a Redis PING; short timeouts."""

from __future__ import annotations

import asyncio
import gc
import socket
import warnings
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def kafka_problem(bootstrap: str, within: float = 5.0, **options: Any) -> str | None:
    """None when the broker at ``bootstrap`` answers a metadata request, else why not.

    ``options`` are aiokafka's security options (``security_protocol``,
    ``ssl_context``, ``sasl_*``). Runs its own event loop in a helper thread, so
    it is safe to call from code that has (or is inside) an event loop, such as
    a pytest fixture.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_quietly, _metadata(bootstrap, within, options)).result()


def _quietly(probe: Coroutine[Any, Any, str | None]) -> str | None:
    """Run ``probe``; then collect what it left behind, without its ResourceWarnings.

    A probe that gives up on a starting TLS listener (``wait_for`` cancels
    aiokafka in the middle of the handshake) leaves the socket to the garbage
    collector, whose warning would otherwise surface in whatever runs next (a
    test, with warnings as errors).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            return asyncio.run(probe)
        finally:
            gc.collect()


async def _metadata(bootstrap: str, within: float, options: dict[str, Any]) -> str | None:
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(
        bootstrap_servers=bootstrap, request_timeout_ms=max(int(within * 1000), 1000), **options
    )
    try:
        await asyncio.wait_for(client.bootstrap(), within)
        if not client.cluster.brokers():
            return "the metadata answer lists no broker"
    except Exception as error:  # any failure is the answer: not ready
        return f"{type(error).__name__}: {error}".rstrip(": ")
    finally:
        await client.close()
    return None


def redis_pings(port: int, host: str = "127.0.0.1", within: float = 0.5) -> bool:
    """Does a Redis server answer PING on ``host:port`` (no password)?"""
    try:
        with socket.create_connection((host, port), timeout=within) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
