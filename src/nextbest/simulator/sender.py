"""Send simulated journeys to Kafka on an open-loop schedule.

Event *i* is due at ``start + offset_i`` whatever the broker does (open loop),
so a slow consumer shows up as latency, not as a lower offered rate. Sends do
not wait for their acknowledgement; acks and errors are counted as they come.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from nextbest.simulator.journeys import Journeys, SimulatedEvent


@dataclass
class Progress:
    sent: int = 0
    acked: int = 0
    errors: int = 0
    malformed: int = 0
    behind: float = 0.0  # how late the last send was against its schedule, s
    by_channel: dict[str, int] = field(default_factory=dict)

    def line(self, elapsed: float) -> str:
        rate = self.sent / elapsed if elapsed > 0 else 0.0
        return (
            f"simulate: {elapsed:6.1f}s sent {self.sent:>8,} ({rate:,.0f}/s) "
            f"acked {self.acked:>8,} errors {self.errors} malformed {self.malformed} "
            f"behind {self.behind * 1000:.0f} ms"
        )


async def simulate(
    journeys: Journeys,
    *,
    bootstrap: str,
    rate: float,
    duration: float | None = None,
    count: int | None = None,
    client_options: dict[str, Any] | None = None,
    report: Callable[[str], None] = print,
    report_every: float = 1.0,
    think: tuple[float, float] | None = None,
    skew: Mapping[str, float] | None = None,
) -> Progress:
    """Send until ``duration`` seconds passed or ``count`` events went out.

    With ``think``, each customer's events are that many seconds apart
    (:meth:`Journeys.paced`). ``skew`` delays the delivery of a channel's events
    by so many seconds, their ``time`` unchanged: as a store system forwarding
    its events late does (contract §3 "Order").
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **(client_options or {}))
    await producer.start()
    progress = Progress()
    pending: set[asyncio.Future[Any]] = set()

    def done(future: asyncio.Future[Any]) -> None:
        pending.discard(future)
        if future.cancelled() or future.exception() is not None:
            progress.errors += 1
        else:
            progress.acked += 1

    start = time.monotonic()
    wall = time.time() - start  # monotonic -> wall clock
    next_report = start + report_every
    delays = dict(skew or {})
    held: list[tuple[float, int, SimulatedEvent]] = []  # skewed events, by when they go

    async def send(event: SimulatedEvent) -> None:
        future = await producer.send(
            f"events.{event.channel}", event.value(), key=event.customer.encode()
        )
        pending.add(future)
        future.add_done_callback(done)
        progress.sent += 1
        progress.malformed += event.malformed
        progress.by_channel[event.channel] = progress.by_channel.get(event.channel, 0) + 1

    stream = journeys.paced(rate, think) if think is not None else journeys.events(rate)
    try:
        for number, event in enumerate(stream):
            if (duration is not None and event.at >= duration) or (
                count is not None and progress.sent + len(held) >= count
            ):
                break
            happened = start + event.at
            while held and held[0][0] <= happened:
                await _sleep_until(held[0][0])
                await send(heapq.heappop(held)[2])
            await _sleep_until(happened)
            progress.behind = max(0.0, time.monotonic() - happened)
            event.document["time"] = datetime.fromtimestamp(wall + happened, UTC).isoformat()
            delay = delays.get(event.channel, 0.0)
            if delay > 0:
                heapq.heappush(held, (happened + delay, number, event))
            else:
                await send(event)
            if time.monotonic() >= next_report:
                report(progress.line(time.monotonic() - start))
                next_report += report_every
        while held:
            await _sleep_until(held[0][0])
            await send(heapq.heappop(held)[2])
        await producer.flush()
        if pending:
            await asyncio.wait(set(pending), timeout=30)
    finally:
        await producer.stop()
    report(progress.line(time.monotonic() - start))
    return progress


async def _sleep_until(moment: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``moment``."""
    wait = moment - time.monotonic()
    if wait > 0:
        await asyncio.sleep(wait)
