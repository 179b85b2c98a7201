"""Small hand-written stand-ins for the worker's adapters: records, a producer, a faust table.

The table is faust's own (a real RocksDB store under a temporary directory) in an
app that never connects: the batch writer and restorer are tested against the
store faust reads back.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from aiokafka.errors import KafkaTimeoutError
from faust.types import TP


@dataclass
class FakeRecord:
    """What aiokafka's fetch returns per record (a ConsumerRecord), as far as nextbest reads it."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp: int = 0  # ms
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None
    headers: Any


@dataclass
class Acked:
    offset: int


class FakeProducer:
    """faust's producer: ``send`` queues and returns the pending ack; acks come at once,
    unless the topic is set to fail."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.failing: set[str] = set()
        self._offsets: defaultdict[tuple[str, int | None], int] = defaultdict(int)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> asyncio.Future[Acked]:
        future: asyncio.Future[Acked] = asyncio.get_running_loop().create_future()
        if topic in self.failing:
            future.set_exception(KafkaTimeoutError())
            return future
        offset = self._offsets[(topic, partition)]
        self._offsets[(topic, partition)] += 1
        self.sent.append(Sent(topic, key, value, partition, headers))
        future.set_result(Acked(offset))
        return future

    def to(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]


def faust_table(tmp_path: Path, partitions: int = 8) -> tuple[faust.App, Any]:
    """An app that never connects, and its ``contexts`` table on a real RocksDB store."""
    app = faust.App(
        "nextbest-test",
        broker="kafka://127.0.0.1:1",
        store="rocksdb://",
        datadir=str(tmp_path / "data"),
        web_enabled=False,
    )
    table = app.Table("contexts", default=None, partitions=partitions, key_type=bytes,
                      value_type=bytes)  # fmt: skip
    return app, table


def stored(table: Any, partition: int) -> Iterator[tuple[bytes, bytes]]:
    yield from table.data._db_for_partition(partition).items()


def tp(topic: str, partition: int) -> TP:
    return TP(topic, partition)
