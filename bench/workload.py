"""The benchmark's input: simulated journeys, sent backlogged or open-loop.

Every arm gets the same records: the simulator's seeded journeys, keyed by
customer id and sent to the customer's partition of ``events.<channel>``. The
workload remembers how many events each customer has been sent and which was
the last record on every topic partition, so the harness can tell when an arm
has processed everything (each partition is processed in order).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from nextbest.adapters.topics import partition_for
from nextbest.simulator.journeys import Journeys, SimulatedEvent


@dataclass(frozen=True, slots=True)
class Sent:
    """What the harness needs to know about one record it sent."""

    id: str
    customer: str
    intended: float  # wall-clock time the open-loop schedule wanted it sent


@dataclass
class Workload:
    journeys: Journeys
    channels: tuple[str, ...]
    partitions: int
    sent: int = 0
    versions: Counter[str] = field(default_factory=Counter)
    last: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    _stream: Iterator[SimulatedEvent] | None = None

    def _next(self) -> SimulatedEvent:
        if self._stream is None:
            self._stream = self.journeys.events(1.0)  # offsets unused: the harness schedules
        return next(self._stream)

    def record(self, intended: float) -> tuple[str, int, bytes, bytes, Sent]:
        """The next record (topic, partition, key, value) stamped with ``intended`` as its time."""
        event = self._next()
        event.document["time"] = datetime.fromtimestamp(intended, UTC).isoformat()
        key = event.customer.encode()
        topic = f"events.{event.channel}"
        partition = partition_for(key, self.partitions)
        self.sent += 1
        self.versions[event.customer] += 1
        self.last[(topic, partition)] = (event.customer, self.versions[event.customer])
        sent = Sent(event.document["id"], event.customer, intended)
        return topic, partition, key, orjson.dumps(event.document), sent

    def final_versions(self) -> dict[str, int]:
        """Customer -> the version its context has once every record sent is applied."""
        return dict(self.last.values())


@dataclass
class Switches(Workload):
    """The trigger-heavy mix: customers who viewed a help page on web (the warm-up,
    sent and applied before anything is measured) each open a chat — every measured
    event is a channel switch that fires ``agent_handoff``."""

    warmed: int = 0  # customers whose help page view was sent
    used: int = 0  # customers who opened their chat

    def warm(self, count: int, intended: float) -> Iterator[tuple[str, int, bytes, bytes, Sent]]:
        """The warm-up records of ``count`` more customers."""
        for _ in range(count):
            self.warmed += 1
            yield self._one("web", "page.viewed", self.warmed, {"page_type": "help"}, intended)

    def record(self, intended: float) -> tuple[str, int, bytes, bytes, Sent]:
        if self.used >= self.warmed:
            raise RuntimeError("every warmed customer has opened a chat: warm more first")
        self.used += 1
        return self._one("chat", "chat.started", self.used, {}, intended)

    def _one(
        self, channel: str, kind: str, number: int, data: dict[str, Any], intended: float
    ) -> tuple[str, int, bytes, bytes, Sent]:
        customer = f"switch-{number}"
        document = {
            "specversion": "1.0",
            "id": f"{kind}-{number}",
            "source": f"/bench/{channel}",
            "type": kind,
            "time": datetime.fromtimestamp(intended, UTC).isoformat(),
            "subject": customer,
            "data": data,
        }
        key = customer.encode()
        topic = f"events.{channel}"
        partition = partition_for(key, self.partitions)
        self.sent += 1
        self.versions[customer] += 1
        self.last[(topic, partition)] = (customer, self.versions[customer])
        return (
            topic,
            partition,
            key,
            orjson.dumps(document),
            Sent(document["id"], customer, intended),
        )


async def send_all(
    records: Iterator[tuple[str, int, bytes, bytes, Sent]],
    bootstrap: str,
    client_options: Mapping[str, Any] | None = None,
) -> None:
    """Send ``records`` as fast as possible."""
    kafka = producer(bootstrap, linger_ms=20, client_options=client_options)
    await kafka.start()
    try:
        for topic, partition, key, value, _ in records:
            await kafka.send(topic, value, key=key, partition=partition)
        await kafka.flush()
    finally:
        await kafka.stop()


def producer(
    bootstrap: str, *, linger_ms: int, client_options: Mapping[str, Any] | None = None
) -> AIOKafkaProducer:
    """``client_options``: TLS/SASL, from ``nextbest.adapters.clients.kafka_client_options``."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=linger_ms,
        max_batch_size=512 * 1024,
        **(client_options or {}),
    )


async def preload(
    workload: Workload,
    bootstrap: str,
    count: int,
    client_options: Mapping[str, Any] | None = None,
) -> None:
    """Send ``count`` records as fast as possible: the backlog an arm drains."""
    kafka = producer(bootstrap, linger_ms=20, client_options=client_options)
    await kafka.start()
    try:
        for _ in range(count):
            topic, partition, key, value, _ = workload.record(time.time())
            await kafka.send(topic, value, key=key, partition=partition)
        await kafka.flush()
    finally:
        await kafka.stop()


async def open_loop(
    workload: Workload,
    bootstrap: str,
    *,
    rate: float,
    seconds: float,
    on_sent: Callable[[Sent], None],
    client_options: Mapping[str, Any] | None = None,
) -> float:
    """Send at ``rate``/s for ``seconds`` on a fixed schedule; return the worst lateness (s).

    Record *i* is due at ``start + i / rate`` whatever the arm does, and its
    intended time, not the moment it really left, is what latency is measured
    from: a slow arm or a slow sender shows as latency, never as a lower rate.
    """
    kafka = producer(bootstrap, linger_ms=1, client_options=client_options)
    await kafka.start()
    worst = 0.0
    try:
        start = time.time() + 0.05
        total = int(rate * seconds)
        index = 0
        while index < total:
            now = time.time()
            due_count = min(total, int((now - start) * rate) + 1)
            if index >= due_count:
                await asyncio.sleep(max(0.0, start + index / rate - now))
                continue
            worst = max(worst, now - (start + index / rate))
            while index < due_count:
                topic, partition, key, value, sent = workload.record(start + index / rate)
                await kafka.send(topic, value, key=key, partition=partition)
                on_sent(sent)
                index += 1
        await kafka.flush()
    finally:
        await kafka.stop()
    return worst
