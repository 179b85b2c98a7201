"""Is every partition serving triggers? Probes that answer, and the log of every trigger.

:class:`Prober` sends, every ``interval`` seconds and to every partition, a
``payment.failed`` of a customer seen for the first time (so no cooldown stands
in the way) on that partition; the engine answers each with a ``payment_help``
trigger. :class:`TriggerLog` reads every trigger topic from the start and keeps
every trigger with the time it arrived. Together they say, for a fault at time
*t*, when every partition served a trigger again: the arrival of the first
answer to a probe sent after *t*, the latest over the partitions.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from nextbest.adapters.topics import partition_for

log = logging.getLogger(__name__)


@dataclass
class Probe:
    partition: int
    event_id: str
    sent_at: float  # time.time()


@dataclass
class TriggerLog:
    """Every trigger delivered: the CloudEvent, and when it arrived (time.time())."""

    bootstrap: str
    channels: tuple[str, ...]
    records: list[dict[str, Any]] = field(default_factory=list)
    arrivals: dict[str, float] = field(default_factory=dict)  # caused_by -> first arrival

    async def run(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            *(f"triggers.{c}" for c in self.channels),
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            request_timeout_ms=10_000,
        )
        await consumer.start()
        try:
            while not stop.is_set():
                try:
                    batches = await consumer.getmany(timeout_ms=200)
                except Exception as error:  # the broker restarts: keep reading
                    log.debug("trigger log: %s", error)
                    await asyncio.sleep(0.5)
                    continue
                now = time.time()
                for records in batches.values():
                    for record in records:
                        trigger = orjson.loads(record.value)
                        self.records.append(trigger)
                        cause = trigger["data"].get("caused_by")
                        if cause is not None:
                            self.arrivals.setdefault(cause, now)
        finally:
            await consumer.stop()


@dataclass
class Prober:
    bootstrap: str
    partitions: int
    interval: float = 0.5
    probes: list[Probe] = field(default_factory=list)
    failed: int = 0
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _run: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def customer(self, partition: int) -> str:
        """A customer never seen before whose key lands on ``partition``."""
        while True:
            candidate = f"probe-{self._run}-{next(self._ids)}"
            if partition_for(candidate.encode(), self.partitions) == partition:
                return candidate

    async def run(self, stop: asyncio.Event) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, linger_ms=0, request_timeout_ms=5_000
        )
        await producer.start()
        try:
            while not stop.is_set():
                started = time.monotonic()
                for partition in range(self.partitions):
                    await self._send(producer, partition)
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            await producer.stop()

    async def _send(self, producer: AIOKafkaProducer, partition: int) -> None:
        customer = self.customer(partition)
        event_id = f"{customer}-pay"
        document = {
            "specversion": "1.0",
            "id": event_id,
            "source": "/soak/probe",
            "type": "payment.failed",
            "time": datetime.now(UTC).isoformat(),
            "subject": customer,
            "data": {"reason": "probe"},
        }
        probe = Probe(partition, event_id, time.time())
        try:
            await producer.send("events.web", orjson.dumps(document), key=customer.encode())
        except Exception:  # the broker is down: this probe never left
            self.failed += 1
            return
        self.probes.append(probe)

    def serving_again(self, since: float, log_: TriggerLog) -> float | None:
        """Seconds from ``since`` until every partition answered a probe sent after it."""
        latest = since
        for partition in range(self.partitions):
            answered = [
                log_.arrivals[p.event_id]
                for p in self.probes
                if p.partition == partition and p.sent_at >= since and p.event_id in log_.arrivals
            ]
            if not answered:
                return None
            latest = max(latest, min(answered))
        return latest - since

    def latencies(self, log_: TriggerLog) -> list[float]:
        return [
            log_.arrivals[p.event_id] - p.sent_at
            for p in self.probes
            if p.event_id in log_.arrivals
        ]
