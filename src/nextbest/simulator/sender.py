"""Send simulated journeys to Kafka on an open-loop schedule.

Event *i* is due at ``start + offset_i`` whatever the broker does (open loop),
so a slow consumer shows up as latency, not as a lower offered rate. Sends do
not wait for their acknowledgement; acks and errors are counted as they come.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from nextbest.simulator.journeys import Journeys


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
) -> Progress:
    """Send until ``duration`` seconds passed or ``count`` events went out."""
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
    next_report = start + report_every
    try:
        for event in journeys.events(rate):
            now = time.monotonic()
            if (duration is not None and event.at >= duration) or (
                count is not None and progress.sent >= count
            ):
                break
            due = start + event.at
            if due > now:
                await asyncio.sleep(due - now)
            progress.behind = max(0.0, time.monotonic() - due)
            event.document["time"] = datetime.now(UTC).isoformat()
            future = await producer.send(
                f"events.{event.channel}", event.value(), key=event.customer.encode()
            )
            pending.add(future)
            future.add_done_callback(done)
            progress.sent += 1
            progress.malformed += event.malformed
            progress.by_channel[event.channel] = progress.by_channel.get(event.channel, 0) + 1
            if time.monotonic() >= next_report:
                report(progress.line(time.monotonic() - start))
                next_report += report_every
        await producer.flush()
        if pending:
            await asyncio.wait(set(pending), timeout=30)
    finally:
        await producer.stop()
    report(progress.line(time.monotonic() - start))
    return progress
