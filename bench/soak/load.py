"""The soak's load: the simulator's paced journeys at a fixed rate, and hostile bursts.

Open loop (each event goes at its time, whatever the engine does), customers'
own events seconds apart, a share of records broken on purpose, and a share
keyed by something other than the customer (a session id), which the engine
must forward to the customer's partition. What was acknowledged is remembered
per customer, for the Redis check after an outage.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from nextbest.simulator.journeys import Journeys

log = logging.getLogger(__name__)


@dataclass
class Load:
    bootstrap: str
    channels: tuple[str, ...]
    rate: float
    customers: int
    seed: int
    malformed: float = 0.05
    unkeyed: float = 0.02
    think: tuple[float, float] = (1.0, 6.0)
    sent: int = 0
    acked: int = 0
    errors: int = 0
    behind: float = 0.0  # the worst lateness against the schedule, s
    # per customer, the times (time.time()) of its valid events the broker acknowledged
    valid: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    async def run(self, stop: asyncio.Event) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, linger_ms=5, request_timeout_ms=30_000
        )
        await producer.start()
        journeys = Journeys(
            customers=self.customers, seed=self.seed, channels=self.channels,
            malformed=self.malformed,
        )  # fmt: skip
        rng = random.Random(self.seed)  # noqa: S311 - a reproducible load
        start = time.monotonic()
        wall = time.time() - start
        try:
            for event in journeys.paced(self.rate, self.think):
                if stop.is_set():
                    break
                due = start + event.at
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.behind = max(self.behind, time.monotonic() - due)
                happened = wall + due
                event.document["time"] = datetime.fromtimestamp(happened, UTC).isoformat()
                key = event.customer.encode()
                if rng.random() < self.unkeyed:
                    key = f"session-{rng.getrandbits(32):x}".encode()
                try:
                    future = await producer.send(f"events.{event.channel}", event.value(), key=key)
                except Exception:  # the broker is gone for longer than a send waits
                    self.errors += 1
                    continue
                self.sent += 1
                customer, valid = event.customer, not event.malformed
                future.add_done_callback(lambda f, c=customer, v=valid: self._acked(f, c, v))
            await producer.flush()
        finally:
            await producer.stop()

    def _acked(self, future: asyncio.Future[object], customer: str, valid: bool) -> None:
        if future.cancelled() or future.exception() is not None:
            self.errors += 1
            return
        self.acked += 1
        if valid:
            self.valid[customer].append(time.time())

    def valid_before(self, moment: float) -> dict[str, int]:
        """Per customer, how many of its valid events were acknowledged before ``moment``."""
        return {c: sum(1 for t in times if t < moment) for c, times in self.valid.items()}


HOSTILE = [
    b"\xff\xfe\xfd not utf-8",
    b"{not json",
    b'{"specversion": "1.0"}',
    b'{"specversion": "1.0", "id": "x", "source": "/h", "type": "cart.item_added", '
    b'"time": "2026-01-01T00:00:00Z", "subject": "h", "data": {"sku": 1, "qty": "two"}}',
    b"[1, 2, 3]",
    b"",
]


async def burst(bootstrap: str, channel: str, count: int, max_bytes: int = 65536) -> int:
    """``count`` hostile records on ``events.<channel>``, as fast as they go; how many sent."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_request_size=4 * max_bytes
    )
    deadline = time.monotonic() + 120
    while True:  # the burst may land while the broker restarts: it goes once it is back
        try:
            await producer.start()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)
    oversize = b'{"specversion": "1.0", "pad": "' + b"x" * (max_bytes + 10) + b'"}'
    sent = 0
    try:
        for number in range(count):
            value = oversize if number % 500 == 0 else HOSTILE[number % len(HOSTILE)]
            while True:  # a broker just back may not know the topic for a moment
                try:
                    await producer.send(
                        f"events.{channel}", value, key=f"hostile-{number}".encode()
                    )
                    break
                except KafkaError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
            sent += 1
        await producer.flush()
    finally:
        await producer.stop()
    return sent
