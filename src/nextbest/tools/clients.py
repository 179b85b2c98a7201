"""Kafka clients for the tools, with the worker's own connection settings.

Security options come from :func:`nextbest.bootstrap.kafka_client_options`
(TLS, SASL), so a tool connects wherever the worker does. A broker that does
not answer becomes :class:`Unreachable`, one line without secrets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from nextbest.settings import Settings

TIMEOUT_MS = 15_000  # a tool waits this long for a broker, not aiokafka's 40 s


class KafkaRecord(Protocol):
    """What the tools read of an aiokafka ``ConsumerRecord``."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # ms
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


class Unreachable(Exception):
    """Kafka did not answer; ``str()`` says where (never with credentials)."""


def _options(settings: Settings) -> dict[str, Any]:
    from nextbest.adapters.clients import kafka_client_options

    return {
        "bootstrap_servers": settings.kafka_bootstrap,
        "request_timeout_ms": TIMEOUT_MS,
        "client_id": "nextbest-cli",
        **kafka_client_options(settings),
    }


@contextmanager
def _quiet_start() -> Iterator[None]:
    """aiokafka logs each failed connection attempt; a tool says it once, in one line."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


async def start_producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(**_options(settings), **options)
    try:
        with _quiet_start():
            await producer.start()
    except KafkaError as error:
        await producer.stop()
        raise Unreachable(_where(settings, error)) from None
    return producer


async def start_consumer(settings: Settings, **options: Any) -> AIOKafkaConsumer:
    """A consumer without a group: it reads what it is told to, commits nothing."""
    consumer = AIOKafkaConsumer(
        **_options(settings),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",  # what exactly_once workers have committed
        **options,
    )
    try:
        with _quiet_start():
            await consumer.start()
    except KafkaError as error:
        await consumer.stop()
        raise Unreachable(_where(settings, error)) from None
    return consumer


async def partitions(settings: Settings, topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of those of ``topics`` that exist (asking creates none)."""
    options = _options(settings)
    options.pop("client_id")
    admin = AIOKafkaAdminClient(**options, client_id="nextbest-cli")
    try:
        with _quiet_start():
            await admin.start()
        existing = set(await admin.list_topics())
        wanted = [topic for topic in topics if topic in existing]
        described = await admin.describe_topics(wanted) if wanted else []
    except KafkaError as error:
        raise Unreachable(_where(settings, error)) from None
    finally:
        await admin.close()
    return sorted(
        TopicPartition(topic["topic"], partition["partition"])
        for topic in described
        for partition in topic["partitions"]
    )


def _where(settings: Settings, error: Exception) -> str:
    return f"cannot reach Kafka at {settings.kafka_bootstrap} ({type(error).__name__})"
